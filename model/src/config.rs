//! Model settings: which model, its widths, and how it is initialised.

use serde::{Deserialize, Serialize};

/// The models of He et al. 2017, a matrix-factorisation baseline and EASE, an item-item model
/// fitted in closed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Generalized matrix factorisation: element-wise product into a linear output.
    Gmf,
    /// Multi-layer perceptron over concatenated user and item embeddings.
    Mlp,
    /// GMF ⊕ MLP into one output layer.
    #[default]
    Neumf,
    /// Dot product plus user and item biases.
    Mf,
    /// EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): an `[items × items]` weight
    /// matrix B fitted in closed form; a user's scores are the sum of its history items' rows of
    /// B. No training steps: `ncf train` fits it as its one epoch.
    Ease,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gmf => "gmf",
            Self::Mlp => "mlp",
            Self::Neumf => "neumf",
            Self::Mf => "mf",
            Self::Ease => "ease",
        }
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gmf" => Ok(Self::Gmf),
            "mlp" => Ok(Self::Mlp),
            "neumf" => Ok(Self::Neumf),
            "mf" => Ok(Self::Mf),
            "ease" => Ok(Self::Ease),
            other => Err(format!("unknown model {other:?}: use gmf, mlp, neumf, mf or ease")),
        }
    }
}

/// Model settings. Defaults follow the paper's factor-8 NeuMF: GMF factors 8, MLP tower
/// [64, 32, 16, 8] whose first width is the concatenated user+item embedding, N(0, 0.01) embeddings,
/// no dropout, dot-product (not cosine) factors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Predictive factors of GMF and MF.
    pub factors: usize,
    /// MLP tower widths; `layers[0]` is the input (user and item embeddings of `layers[0]/2` each).
    pub layers: Vec<usize>,
    /// Standard deviation of the normal embedding initialisation.
    pub init_std: f64,
    /// Dropout after each hidden MLP layer while training (0 = none, as in the paper).
    pub dropout: f64,
    /// Score GMF/MF factors by cosine: user and item factor vectors are L2-normalised before
    /// their (weighted) dot product, as SimpleX's CCL expects; MF then drops its biases.
    pub cosine: bool,
    /// Weight of the user's training history in its user vector (0 = none, the paper's models):
    /// the user row becomes `(1 - w)·own row + w·mean of its training items' rows`, SimpleX's
    /// history aggregation (mean pooling, no projection). Users without history keep their row.
    pub history: f64,
    /// Whether each user and item has an id embedding (the paper's models). `false` with side
    /// features trains a pure feature model: an entity is the sum of its feature rows, so
    /// entities share everything their attributes share.
    pub id_embeddings: bool,
    /// EASE's L2 weight λ, added to the diagonal of the item Gram matrix before it is inverted
    /// (only for `kind = "ease"`). Larger values shrink B towards popularity; the best value
    /// grows with the catalogue's density and is chosen on validation (`configs/*-ease.toml`).
    pub ease_lambda: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Neumf,
            factors: 8,
            layers: vec![64, 32, 16, 8],
            init_std: 0.01,
            dropout: 0.0,
            cosine: false,
            history: 0.0,
            id_embeddings: true,
            ease_lambda: 400.0,
        }
    }
}

/// Column layout of the user and item tables: `[gmf | mlp]` for NeuMF, one part for GMF/MLP,
/// `[factors | bias]` for MF. One table per side lets a step gather each row once. EASE has no
/// such columns: its user table is one unused zero column (a user is its history) and its item
/// table is B, `[n_items, n_items]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    pub kind: ModelKind,
    /// Width of the GMF (or MF) factor part.
    pub gmf: usize,
    /// Width of the MLP embedding part.
    pub mlp: usize,
}

impl TableLayout {
    pub fn width(&self) -> usize {
        self.gmf + self.mlp + matches!(self.kind, ModelKind::Mf | ModelKind::Ease) as usize
    }
}

impl ModelConfig {
    /// Checks widths before any tensor is made.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout = {}: must be in [0, 1)", self.dropout));
        }
        if !(0.0..=1.0).contains(&self.history) {
            return Err(format!("model.history = {}: must be in [0, 1] (0 = no history)", self.history));
        }
        if self.kind == ModelKind::Ease {
            if !(self.ease_lambda > 0.0 && self.ease_lambda.is_finite()) {
                return Err(format!("model.ease_lambda = {}: must be positive (it keeps the Gram matrix invertible)", self.ease_lambda));
            }
            return Ok(());
        }
        if self.factors == 0 && self.kind != ModelKind::Mlp {
            return Err("model.factors must be at least 1".into());
        }
        if matches!(self.kind, ModelKind::Mlp | ModelKind::Neumf) {
            if self.layers.len() < 2 {
                return Err("model.layers needs an input width and at least one hidden width".into());
            }
            if !self.layers[0].is_multiple_of(2) || self.layers.contains(&0) {
                return Err(format!("model.layers {:?}: widths must be positive and the first even", self.layers));
            }
        }
        Ok(())
    }

    pub fn layout(&self) -> TableLayout {
        let mlp = match self.kind {
            ModelKind::Mlp | ModelKind::Neumf => self.layers[0] / 2,
            _ => 0,
        };
        let gmf = match self.kind {
            ModelKind::Mlp | ModelKind::Ease => 0,
            _ => self.factors,
        };
        TableLayout { kind: self.kind, gmf, mlp }
    }
}

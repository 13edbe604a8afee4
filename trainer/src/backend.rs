//! Backend choice: `auto` takes a hardware wgpu adapter (discrete, then integrated) and otherwise
//! flex; software adapters (lavapipe, llvmpipe) report a CPU type and are never auto-picked.

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::ValueEnum;

/// The compute backends ncf can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    Auto,
    Flex,
    Wgpu,
    Ndarray,
    Cuda,
}

/// A ready device and how it was chosen.
#[derive(Debug, Clone)]
pub struct Selected {
    pub device: Device,
    pub name: BackendName,
    /// Adapter or CPU description.
    pub adapter: String,
    /// Why this backend, for the one line printed at start.
    pub reason: String,
    /// Largest buffer one kernel can bind, in bytes (wgpu: the adapter's
    /// `max_storage_buffer_binding_size`, which ncf requests in full); `None` = no such limit.
    pub max_binding: Option<u64>,
    /// The wgpu adapter kind opened (wgpu only): `--devices` opens others of the same kind.
    pub wgpu_kind: Option<burn::tensor::DeviceKind>,
}

impl Selected {
    /// The one line naming the backend, the adapter and why.
    pub fn line(&self) -> String {
        format!("backend: {} ({}) — {}", self.name.as_str(), self.adapter, self.reason)
    }

    /// Refuses, before any work, a `[rows, cols]` f32 tensor that one binding cannot hold, naming
    /// the limit, the size and what to do.
    pub fn check_table(&self, what: &str, rows: usize, cols: usize) -> Result<()> {
        let bytes = rows as u64 * cols as u64 * 4;
        match self.max_binding {
            Some(limit) if bytes > limit => bail!(
                "{what} is {rows} × {cols} f32 = {}, above the {} this adapter ({}) can bind in one buffer \
                 (max_storage_buffer_binding_size); use --backend flex or cuda, fewer factors/layers, or fewer items \
                 (data.clean.min_item_interactions)",
                human(bytes),
                human(limit),
                self.adapter
            ),
            _ => Ok(()),
        }
    }

    /// Whether this is a software wgpu adapter (lavapipe, llvmpipe): real but slow, never auto-picked.
    pub fn software_adapter(&self) -> bool {
        self.reason.ends_with(SOFTWARE)
    }

    /// The devices `--devices LIST` names on this backend, device 0 of the list first, each with
    /// a description: CUDA ordinals; wgpu adapters of the kind this backend opened, by index
    /// among that kind; on flex, ndarray (one CPU device) and a software wgpu adapter, replicas
    /// of the one device (a software adapter opens a second runtime for index 1, two at most),
    /// which check data-parallel training without GPUs and do not speed it up.
    pub fn devices(&self, list: &str) -> Result<Vec<(Device, String)>> {
        let indices = parse_devices(list)?;
        match self.name {
            BackendName::Flex | BackendName::Ndarray => {
                Ok(indices.iter().map(|i| (self.device.clone(), format!("{} replica {i} ({})", self.name.as_str(), self.adapter))).collect())
            }
            BackendName::Cuda => cuda_devices(list, &indices),
            BackendName::Wgpu => self.wgpu_devices(list, &indices),
            BackendName::Auto => unreachable!("select resolves auto"),
        }
    }

    #[cfg(feature = "wgpu")]
    fn wgpu_devices(&self, list: &str, indices: &[usize]) -> Result<Vec<(Device, String)>> {
        use burn::tensor::DeviceKind;
        let kind = self.wgpu_kind.clone().expect("a wgpu backend records its adapter kind");
        let software = matches!(kind, DeviceKind::Cpu);
        indices
            .iter()
            .map(|&i| {
                let want = match (kind.clone(), i) {
                    (DeviceKind::DiscreteGpu(_), i) => DeviceKind::DiscreteGpu(i),
                    (DeviceKind::IntegratedGpu(_), i) => DeviceKind::IntegratedGpu(i),
                    (DeviceKind::VirtualGpu(_), i) => DeviceKind::VirtualGpu(i),
                    (_, 0) => DeviceKind::Cpu,
                    // A second runtime on the one software adapter (the default device is it
                    // when no hardware adapter exists).
                    (_, 1) => DeviceKind::DefaultDevice,
                    _ => bail!("--devices {list}: a software wgpu adapter ({}) gives two devices at most, 0 and 1", self.adapter),
                };
                let device = if want == kind {
                    self.device.clone()
                } else {
                    Device::wgpu_options()
                        .device_kind(want.clone())
                        .init()
                        .map_err(|e| anyhow::anyhow!("--devices {list}: could not open wgpu device {i} ({want:?}): {e}"))?
                };
                let what = if software { format!("wgpu {want:?} runtime on {} (a replica: software adapter)", self.adapter) } else { format!("wgpu {want:?}") };
                Ok((device, what))
            })
            .collect()
    }

    #[cfg(not(feature = "wgpu"))]
    fn wgpu_devices(&self, _: &str, _: &[usize]) -> Result<Vec<(Device, String)>> {
        bail!("this ncf was built without the `wgpu` feature")
    }

    /// Whether device memory is host memory, so reading scores back costs no transfer.
    pub fn host_memory(&self) -> bool {
        matches!(self.name, BackendName::Flex | BackendName::Ndarray)
    }

    /// Bytes a computation on this backend may plan to hold at once: on the CPU backends the
    /// memory the system has available (`MemAvailable`, or [`HOST_MEMORY_ENV`] when set and
    /// lower); `None` where unknown (a GPU, or no /proc/meminfo).
    pub fn available_memory(&self) -> Option<u64> {
        if !self.host_memory() {
            return None;
        }
        let available = meminfo_kib("MemAvailable").map(|kib| kib * 1024);
        let lowered = std::env::var(HOST_MEMORY_ENV).ok().and_then(|v| v.parse::<u64>().ok());
        match (available, lowered) {
            (Some(a), Some(l)) => Some(a.min(l)),
            (a, l) => a.or(l),
        }
    }
}

/// A `/proc/meminfo` field in KiB (`MemTotal`, `MemAvailable`, …); `None` where there is none.
pub(crate) fn meminfo_kib(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.split_once(':').is_some_and(|(name, _)| name == field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Environment variable lowering the host memory ncf plans for on CPU backends (bytes): to try
/// the refusal of oversized EASE fits without allocating gigabytes, or to leave room for others.
pub const HOST_MEMORY_ENV: &str = "NCF_HOST_MEMORY_BYTES";

impl BackendName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Ndarray => "ndarray",
            Self::Cuda => "cuda",
        }
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// Bytes as GiB, MiB, KiB or B, whichever is the largest unit they reach.
pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / MIB),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Environment variable lowering the wgpu binding limit ncf plans for (bytes): to try the
/// refusal of oversized tables without allocating gigabytes, or to mimic a smaller GPU.
pub const MAX_BINDING_ENV: &str = "NCF_MAX_BINDING_BYTES";

/// How a software adapter is flagged in [`Selected::reason`].
const SOFTWARE: &str = "software adapter, slow";

fn cpu_name() -> String {
    let threads = rayon::current_num_threads();
    format!("CPU, {threads} threads")
}

/// Opens the requested backend.
pub fn select(name: BackendName) -> Result<Selected> {
    match name {
        BackendName::Auto => auto(),
        BackendName::Flex => flex("requested"),
        BackendName::Wgpu => wgpu_device(None, "requested"),
        BackendName::Ndarray => ndarray(),
        BackendName::Cuda => cuda(),
    }
}

#[cfg(feature = "flex")]
fn flex(reason: &str) -> Result<Selected> {
    Ok(Selected { device: Device::flex(), name: BackendName::Flex, adapter: cpu_name(), reason: reason.into(), max_binding: None, wgpu_kind: None })
}

#[cfg(not(feature = "flex"))]
fn flex(_: &str) -> Result<Selected> {
    bail!("this ncf was built without the `flex` feature")
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)] // burn-ndarray is deprecated upstream; kept as an opt-in backend.
fn ndarray() -> Result<Selected> {
    Ok(Selected { device: Device::ndarray(), name: BackendName::Ndarray, adapter: cpu_name(), reason: "requested".into(), max_binding: None, wgpu_kind: None })
}

#[cfg(not(feature = "ndarray"))]
fn ndarray() -> Result<Selected> {
    bail!("this ncf was built without the `ndarray` feature: rebuild with `--features ndarray`")
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Selected> {
    // Enumeration checks for the driver library first; opening a device without one panics.
    if Device::enumerate(burn::tensor::DeviceType::Cuda).is_empty() {
        bail!("--backend cuda: no NVIDIA driver or CUDA device found; use --backend wgpu or flex");
    }
    Ok(Selected {
        device: Device::cuda(0),
        name: BackendName::Cuda,
        adapter: "CUDA device 0".into(),
        reason: "requested".into(),
        max_binding: None,
        wgpu_kind: None,
    })
}

#[cfg(feature = "cuda")]
fn cuda_devices(list: &str, indices: &[usize]) -> Result<Vec<(Device, String)>> {
    let n = Device::enumerate(burn::tensor::DeviceType::Cuda).len();
    if let Some(i) = indices.iter().find(|&&i| i >= n) {
        bail!("--devices {list}: no CUDA device {i} ({n} found)");
    }
    Ok(indices.iter().map(|&i| (Device::cuda(i), format!("CUDA device {i}"))).collect())
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices(_: &str, _: &[usize]) -> Result<Vec<(Device, String)>> {
    bail!("this ncf was built without the `cuda` feature: rebuild with `--features cuda`")
}

/// `0,1,3` → `[0, 1, 3]`: indices separated by commas, none twice.
pub fn parse_devices(list: &str) -> Result<Vec<usize>> {
    let Some(indices) = list.split(',').map(|s| s.trim().parse().ok()).collect::<Option<Vec<usize>>>() else {
        bail!("--devices {list:?}: expected device indices separated by commas, e.g. 0,1");
    };
    if let Some((_, dup)) = indices.iter().enumerate().find(|(k, i)| indices[..*k].contains(i)) {
        bail!("--devices {list}: device {dup} is named twice");
    }
    Ok(indices)
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Selected> {
    bail!("this ncf was built without the `cuda` feature: rebuild with `--features cuda`")
}

#[cfg(feature = "wgpu")]
mod gpu {
    use burn::tensor::wgpu::wgpu;

    /// Adapters wgpu can see, with the largest buffer each can bind (bytes).
    pub fn adapters() -> Vec<(wgpu::AdapterInfo, u64)> {
        let instance = wgpu::Instance::default();
        burn::tensor::read_sync(instance.enumerate_adapters(wgpu::Backends::all()))
            .iter()
            .map(|a| {
                let l = a.limits();
                (a.get_info(), l.max_storage_buffer_binding_size.min(l.max_buffer_size))
            })
            .collect()
    }

    pub fn is_hardware(info: &wgpu::AdapterInfo) -> bool {
        matches!(info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu)
    }
}

#[cfg(feature = "wgpu")]
fn auto() -> Result<Selected> {
    use burn::tensor::wgpu::wgpu::DeviceType;
    let infos: Vec<_> = gpu::adapters().into_iter().map(|(i, _)| i).collect();
    let pick = [DeviceType::DiscreteGpu, DeviceType::IntegratedGpu].iter().find_map(|t| infos.iter().find(|i| i.device_type == *t));
    match pick {
        Some(info) => wgpu_device(Some(info.device_type), &format!("auto: hardware {:?} adapter found", info.device_type)),
        None => {
            let seen: Vec<String> = infos.iter().map(|i| format!("{} ({:?})", i.name, i.device_type)).collect();
            let why = if seen.is_empty() {
                "auto: no wgpu adapter found, using the CPU".to_string()
            } else {
                format!("auto: only software adapters ({}), using the CPU", seen.join(", "))
            };
            flex(&why)
        }
    }
}

#[cfg(not(feature = "wgpu"))]
fn auto() -> Result<Selected> {
    flex("auto: built without wgpu, using the CPU")
}

#[cfg(feature = "wgpu")]
fn wgpu_device(kind: Option<burn::tensor::wgpu::wgpu::DeviceType>, reason: &str) -> Result<Selected> {
    use burn::tensor::DeviceKind;
    use burn::tensor::wgpu::wgpu::DeviceType;
    let adapters = gpu::adapters();
    let want = kind.or_else(|| {
        [DeviceType::DiscreteGpu, DeviceType::IntegratedGpu, DeviceType::Cpu, DeviceType::VirtualGpu, DeviceType::Other]
            .into_iter()
            .find(|t| adapters.iter().any(|(i, _)| i.device_type == *t))
    });
    let Some(want) = want else {
        bail!("--backend wgpu: no wgpu adapter found (install a Vulkan driver, e.g. mesa-vulkan-drivers for the CPU)");
    };
    let (info, limit) = adapters.iter().find(|(i, _)| i.device_type == want).expect("adapter of the chosen type");
    let device_kind = match want {
        DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(0),
        DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(0),
        DeviceType::VirtualGpu => DeviceKind::VirtualGpu(0),
        _ => DeviceKind::Cpu,
    };
    let device =
        Device::wgpu_options().device_kind(device_kind.clone()).init().map_err(|e| anyhow::anyhow!("--backend wgpu: could not open {}: {e}", info.name))?;
    let lowered = std::env::var(MAX_BINDING_ENV).ok().and_then(|v| v.parse::<u64>().ok());
    let max_binding = lowered.map_or(*limit, |l| l.min(*limit));
    let adapter = format!("{} ({:?}, {:?}, max binding {})", info.name, info.device_type, info.backend, human(max_binding));
    let reason = if gpu::is_hardware(info) { reason.to_string() } else { format!("{reason}; {SOFTWARE}") };
    Ok(Selected { device, name: BackendName::Wgpu, adapter, reason, max_binding: Some(max_binding), wgpu_kind: Some(device_kind) })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_: Option<()>, _: &str) -> Result<Selected> {
    bail!("this ncf was built without the `wgpu` feature")
}

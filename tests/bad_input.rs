//! Bad input of every kind in README's "Bad input" table, each tried through the `ncf` binary.
//! A refused input gets an `error:` line naming the file (and the line, column or key), a
//! non-zero exit, no panic, and no output or temporary file left behind; the rows the table marks
//! as read (byte-order mark, CRLF, quoted fields, Latin-1, long numbers, negative ratings) are read
//! exactly.

#[path = "ncf_bin.rs"]
mod ncf_bin;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;
use ncf_bin::{ncf, temp_dir};
use ncf_datasets::table::{Kind, Values};
use ncf_datasets::{Interactions, ParquetSink, ReadOptions, reader};

/// Writes `bytes` to `dir/name`.
fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The names in `dir`, sorted: compared before and after a refused command.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Process output as text.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` and asserts the refusal the table promises: exit code ≠ 0, stderr starting with
/// `error:` and holding every one of `needles`, no panic, and nothing new in `watched`.
fn refused(mut cmd: Command, watched: &Path, needles: &[&str]) {
    let before = listing(watched);
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{cmd:?} succeeded:\n{stdout}\n{stderr}");
    assert!(stderr.starts_with("error:"), "{cmd:?}: stderr does not start with `error:`:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{cmd:?} panicked:\n{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{cmd:?}: {needle:?} missing from:\n{stderr}");
    }
    assert_eq!(listing(watched), before, "{cmd:?} left output behind in {}", watched.display());
}

/// Asserts that `file` is refused by `ncf data stats`, `ncf data split --out` and `ncf train
/// --out`, each naming the file and every one of `needles`, with nothing written into `dir`.
fn refuses_data(dir: &Path, file: &Path, needles: &[&str]) {
    let shown = file.display().to_string();
    let needles: Vec<&str> = [shown.as_str()].into_iter().chain(needles.iter().copied()).collect();
    let mut stats = ncf();
    stats.args(["data", "stats"]).arg(file);
    refused(stats, dir, &needles);
    let mut split = ncf();
    split.args(["data", "split"]).arg(file).arg("--out").arg(dir.join("split"));
    refused(split, dir, &needles);
    train_refuses(dir, &["--data", &shown], &needles);
}

/// `ncf data stats FILE`'s stdout, asserting success.
fn stats(file: &Path, flags: &[&str]) -> String {
    let out = ncf().args(["data", "stats"]).arg(file).args(flags).output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "data stats {} failed:\n{stdout}\n{stderr}", file.display());
    stdout
}

/// The value printed after `key` on its line of `ncf data stats` output.
fn stat<'a>(stdout: &'a str, key: &str) -> &'a str {
    let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(key)).unwrap_or_else(|| panic!("no {key} in:\n{stdout}"));
    line[key.len()..].trim()
}

/// Reads `file` through the library with default options, asserting success.
fn read(file: &Path) -> Interactions {
    reader::read(file, &ReadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Asserts `ncf data stats` counts `(users, items, interactions)` in `file`.
fn assert_counts(file: &Path, flags: &[&str], counts: (usize, usize, usize)) -> String {
    let out = stats(file, flags);
    let got = (stat(&out, "users").to_owned(), stat(&out, "items").to_owned(), stat(&out, "interactions").to_owned());
    assert_eq!(got, (counts.0.to_string(), counts.1.to_string(), counts.2.to_string()), "{out}");
    out
}

/// Asserts that `bytes`, written to `name` in a fresh directory for `test`, is refused as
/// [`refuses_data`] says.
fn refuses_file(test: &str, name: &str, bytes: impl AsRef<[u8]>, needles: &[&str]) {
    let d = temp_dir(test);
    refuses_data(&d, &write(&d, name, bytes), needles);
}

/// Writes `bytes` to `name` in a fresh directory for `test`, asserts that `ncf data stats` (with
/// `flags`) counts `(users, items, interactions)` in it, and returns the file, that stdout and
/// the file as the library reads it.
fn reads_file(test: &str, name: &str, bytes: impl AsRef<[u8]>, flags: &[&str], counts: (usize, usize, usize)) -> (PathBuf, String, Interactions) {
    let f = write(&temp_dir(test), name, bytes);
    let stdout = assert_counts(&f, flags, counts);
    let data = read(&f);
    (f, stdout, data)
}

// ---------------------------------------------------------------------------------------------
// Interaction files

#[test]
fn empty_file() {
    refuses_file("empty", "empty.csv", "", &["the file is empty"]);
    refuses_file("empty", "blank.csv", "\n \n\r\n", &["the file is empty"]);
}

#[test]
fn header_only() {
    refuses_file("header-only", "header.csv", "user,item,rating\n", &["a header (user, item, rating) but no interactions"]);
}

#[test]
fn byte_order_mark_is_skipped() {
    let (_, _, data) = reads_file("bom", "bom.csv", "\u{feff}user,item,rating\n1,10,5\n2,10,4\n", &["--user-col", "user"], (2, 1, 2));
    assert_eq!(data.users.raw_ids(), &["1", "2"]);
    let (_, _, data) = reads_file("bom", "bom.tsv", "\u{feff}1\t10\n2\t10\n", &[], (2, 1, 2));
    assert_eq!(data.users.raw_ids(), &["1", "2"]);
}

#[test]
fn crlf_line_ends() {
    let (_, _, data) = reads_file("crlf", "crlf.csv", "user,item,rating\r\n1,10,5\r\n2,11,4\r\n", &["--rating-col", "rating"], (2, 2, 2));
    assert_eq!((data.items.raw_ids(), data.rating), (&["10".to_owned(), "11".to_owned()][..], Some(vec![5.0, 4.0])));
    let (_, _, data) = reads_file("crlf", "cr.csv", "user,item\r1,10\r2,11\r", &[], (2, 2, 2));
    assert_eq!(data.users.raw_ids(), &["1", "2"]);
}

#[test]
fn quoted_fields_with_separators() {
    let csv = "user,item,rating\n\"a,b\",\"x\"\"y\",5\n\"tab\there\",\"two\nlines\",4\n\"a,b\",plain,3\n";
    let (_, _, data) = reads_file("quoted", "quoted.csv", csv, &[], (2, 3, 3));
    assert_eq!(data.users.raw_ids(), &["a,b", "tab\there"]);
    assert_eq!(data.items.raw_ids(), &["x\"y", "two\nlines", "plain"]);
}

#[test]
fn latin1_fields() {
    let (_, _, data) = reads_file("latin1", "latin1.csv", b"user,item\ncaf\xe9,1\nna\xefve,2\ncaf\xe9,2\n", &[], (2, 2, 3));
    assert_eq!(data.users.raw_ids(), &["café", "naïve"]);
}

#[test]
fn missing_column() {
    let d = temp_dir("missing-column");
    let f = write(&d, "ratings.csv", "user,item,rating\n1,10,5\n");
    let mut cmd = ncf();
    cmd.args(["data", "stats"]).arg(&f).args(["--rating-col", "stars"]);
    refused(cmd, &d, &[&f.display().to_string(), "\"stars\"", "--rating-col", "\"rating\""]);
    refuses_file("missing-column", "one-column.csv", "1\n2\n", &["found 1 column(s)"]);
}

#[test]
fn short_row() {
    refuses_file("short-row", "short.csv", "user,item,rating\n1,10,5\n2,10\n", &["line 3: 2 fields where the header has 3"]);
}

#[test]
fn long_row() {
    refuses_file("long-row", "long.csv", "user,item,rating\n1,10,5\n2,10,4,extra\n", &["line 3: 4 fields where the header has 3"]);
}

#[test]
fn non_numeric_rating() {
    refuses_file("non-numeric", "words.csv", "user,item,rating\n1,10,5\n2,10,lots\n", &["line 3, column \"rating\": \"lots\" is not a number"]);
}

#[test]
fn nan_rating() {
    refuses_file("nan", "nan.csv", "user,item,rating\n1,10,5\n2,10,NaN\n", &["line 3, column \"rating\": \"NaN\" is not a finite number"]);
}

#[test]
fn infinite_rating() {
    refuses_file("inf", "inf.csv", "user,item,rating\n1,10,-inf\n", &["line 2, column \"rating\": \"-inf\" is not a finite number"]);
    refuses_file("inf", "overflow.csv", "user,item,rating\n1,10,1e39\n", &["line 2, column \"rating\": \"1e39\" is not a finite number"]);
}

#[test]
fn negative_ratings_are_read() {
    let csv = "user,item,rating\n1,10,-1\n1,11,5\n1,12,2\n2,10,4\n2,12,-0.5\n2,11,1\n";
    let (f, out, _) = reads_file("negative", "dislikes.csv", csv, &[], (2, 3, 6));
    assert_eq!(stat(&out, "ratings"), "-1 to 5", "{out}");
    let out = ncf().args(["data", "split"]).arg(&f).args(["--no-write", "--set", "data.clean.min_rating=0"]).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success() && stdout.contains("dropped 2 below the rating threshold"), "{stdout}{}", text(&out.stderr));
}

#[test]
fn ids_past_2_pow_64_and_leading_zeros() {
    let csv = "user,item\n18446744073709551616,1\n18446744073709551617,1\n007,2\n7,2\n18446744073709551616,2\n";
    let (_, _, data) = reads_file("big-ids", "big.csv", csv, &[], (4, 2, 5));
    assert_eq!(data.users.raw_ids(), &["18446744073709551616", "18446744073709551617", "007", "7"]);
}

/// `field` in double quotes, its quotes doubled.
fn quoted(field: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in field {
        out.extend(if b == b'"' { &b"\"\""[..] } else { std::slice::from_ref(&b) });
    }
    out.push(b'"');
    out
}

/// The (user, item) pairs of `data` as raw ids, sorted.
fn raw_pairs(data: &Interactions) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> =
        data.user.iter().zip(&data.item).map(|(&u, &i)| (data.users.raw(u).to_owned(), data.items.raw(i).to_owned())).collect();
    pairs.sort();
    pairs
}

#[test]
fn odd_ids_round_trip_through_data_split() {
    let users: [&[u8]; 7] = [b"a,b", b"say \"hi\"", b"tab\there", b"two\r\nlines", b"007", b"caf\xe9", b"18446744073709551616"];
    let items: [&[u8]; 3] = [b"x,1", b"\"q\"", b"00042"];
    let mut csv = b"user,item\n".to_vec();
    for u in users {
        for i in items {
            csv.extend([quoted(u), b",".to_vec(), quoted(i), b"\n".to_vec()].concat());
        }
    }
    let (f, _, data) = reads_file("round-trip", "odd.csv", csv, &[], (7, 3, 21));
    assert!(data.users.raw_ids().contains(&"café".to_owned()) && data.users.raw_ids().contains(&"two\r\nlines".to_owned()));
    let out = f.with_file_name("split");
    let run = ncf().args(["data", "split"]).arg(&f).arg("--out").arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    let files = ["train.csv", "valid.csv", "test.csv"];
    let mut written: Vec<(String, String)> = files.iter().flat_map(|f| raw_pairs(&read(&out.join(f)))).collect();
    written.sort();
    assert_eq!(written, raw_pairs(&data));
}

#[test]
fn one_megabyte_id() {
    let csv = format!("user,item\n1,10\n{},10\n", "7".repeat(1 << 20));
    refuses_file("huge-id", "huge.csv", csv, &["line 3: column \"user\": an id of 1048576 bytes"]);
}

#[test]
fn binary_garbage() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    refuses_file("garbage", "garbage.csv", bytes, &["binary data"]);
    refuses_file("garbage", "control.csv", b"user,item\n1,\x01\x02\x03\n", &["line 2, column \"item\"", "control characters"]);
}

#[test]
fn gzip_file() {
    // `user,item\n1,2\n`, gzip-compressed.
    let gz: [u8; 34] = [31, 139, 8, 0, 0, 0, 0, 0, 2, 255, 43, 45, 78, 45, 210, 201, 44, 73, 205, 229, 50, 212, 49, 226, 2, 0, 12, 245, 124, 112, 14, 0, 0, 0];
    refuses_file("gzip", "ratings.csv.gz", gz, &["gzip-compressed data; decompress it first"]);
    refuses_file("gzip", "ratings.csv", gz, &["gzip-compressed data"]);
}

#[test]
fn directory_as_input() {
    let d = temp_dir("directory");
    let input = d.join("ratings.csv");
    std::fs::create_dir(&input).unwrap();
    // A directory is read as a directory of parts: one without any is refused.
    refuses_data(&d, &input, &["the directory holds no part files", "a glob like DIR/part-*.parquet"]);
}

#[test]
fn unreadable_file() {
    use std::os::unix::fs::PermissionsExt;
    let d = temp_dir("unreadable");
    let locked = write(&d, "locked.csv", "user,item\n1,2\n");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads any file whatever its mode; nobody can read a socket.
    let _listener;
    let input = if std::fs::File::open(&locked).is_ok() {
        let socket = d.join("socket.csv");
        _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        socket
    } else {
        locked
    };
    refuses_data(&d, &input, &[]);
}

/// A Parquet file of one batch of typed columns.
fn parquet(dir: &Path, name: &str, columns: &[(&str, Kind)], values: &[Values]) -> PathBuf {
    let path = dir.join(name);
    let columns: Vec<(String, Kind)> = columns.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    let mut sink = ParquetSink::new(std::fs::File::create(&path).unwrap(), &path, &columns).unwrap();
    sink.write(values).unwrap();
    sink.finish().unwrap();
    path
}

#[test]
fn parquet_with_wrong_column_types() {
    let d = temp_dir("parquet");
    let f = parquet(&d, "float-ids.parquet", &[("user", Kind::F32), ("item", Kind::U32)], &[Values::F32(vec![1.0]), Values::U32(vec![7])]);
    refuses_data(&d, &f, &["column \"user\" holds f32 values; expected integer or string ids"]);
    let words = Values::Str(vec![Some("five".into())]);
    let f = parquet(
        &d,
        "text-ratings.parquet",
        &[("user", Kind::U32), ("item", Kind::U32), ("rating", Kind::Str)],
        &[Values::U32(vec![1]), Values::U32(vec![7]), words],
    );
    refuses_data(&d, &f, &["column \"rating\" holds str values; expected numbers (ratings)"]);
    let f = parquet(
        &d,
        "ok.parquet",
        &[("user", Kind::Str), ("item", Kind::U32), ("rating", Kind::F32)],
        &[Values::Str(vec![Some("a".into())]), Values::U32(vec![7]), Values::F32(vec![-1.0])],
    );
    assert_counts(&f, &[], (1, 1, 1));
}

// ---------------------------------------------------------------------------------------------
// Checkpoints, pairs and users files

/// A tiny run trained once per test process (`ncf train --backend flex --epochs 1`, 30 × 40
/// demo users and items, ids `1..=30` and `1..=40`), shared by the checkpoint tests.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = temp_dir("run").join("run");
        let out = ncf()
            .args(["train", "--backend", "flex", "--epochs", "1", "--seed", "5"])
            .args(["--set", "data.demo.users=30", "--set", "data.demo.items=40", "--out"])
            .arg(&run)
            .output()
            .unwrap();
        assert!(out.status.success(), "train failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
        run
    })
}

/// A copy of the trained run's `best/` checkpoint in a fresh directory (`DIR/ck`), to corrupt.
fn checkpoint_copy(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let ck = dir.join("ck");
    std::fs::create_dir(&ck).unwrap();
    for entry in std::fs::read_dir(trained_run().join("best")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), ck.join(entry.file_name())).unwrap();
    }
    (dir, ck)
}

/// Asserts that `ncf recommend` refuses checkpoint `ck`, naming `needles`, and writes nothing in `dir`.
fn recommend_refuses(dir: &Path, ck: &Path, needles: &[&str]) {
    let mut cmd = ncf();
    cmd.args(["recommend", "--backend", "flex", "--checkpoint"]).arg(ck).arg("--out").arg(dir.join("recs.csv"));
    refused(cmd, dir, needles);
}

/// Rewrites `file` through `change`.
fn corrupt(file: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(file).unwrap();
    change(&mut bytes);
    std::fs::write(file, bytes).unwrap();
}

/// The length of a safetensors file's JSON header.
fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn truncated_safetensors() {
    let (dir, ck) = checkpoint_copy("truncated");
    let weights = ck.join("model.safetensors");
    corrupt(&weights, |b| b.truncate(b.len() / 2));
    recommend_refuses(&dir, &ck, &[&weights.display().to_string()]);
    corrupt(&weights, |b| b.truncate(5));
    recommend_refuses(&dir, &ck, &[&weights.display().to_string()]);
}

#[test]
fn bit_flipped_safetensors_header() {
    let (dir, ck) = checkpoint_copy("flipped-header");
    let weights = ck.join("model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    // The header's length, then a byte in the middle of its JSON.
    for at in [6, 8 + header_len(&original) / 2] {
        std::fs::write(&weights, &original).unwrap();
        corrupt(&weights, |b| b[at] ^= 0x80);
        recommend_refuses(&dir, &ck, &[&weights.display().to_string()]);
    }
}

#[test]
fn bit_flipped_safetensors_data() {
    let (dir, ck) = checkpoint_copy("flipped-data");
    let weights = ck.join("model.safetensors");
    corrupt(&weights, |b| {
        let last = b.len() - 1;
        b[last] ^= 0x01;
    });
    recommend_refuses(&dir, &ck, &[&weights.display().to_string()]);
}

#[test]
fn checkpoint_of_another_format_version() {
    let (dir, ck) = checkpoint_copy("version");
    let meta = ck.join("checkpoint.json");
    let original = std::fs::read_to_string(&meta).unwrap();
    for version in [1, 99] {
        std::fs::write(&meta, ncf_bin::with_format_version(&original, version)).unwrap();
        recommend_refuses(&dir, &ck, &[&ck.display().to_string(), &format!("format version {version}")]);
    }
}

#[test]
fn pairs_file_with_unknown_ids() {
    let run = trained_run();
    let d = temp_dir("pairs");
    let pairs = write(&d, "pairs.csv", "user,item\n1,1\nnobody,1\n2,nothing\n");
    let mut cmd = ncf();
    cmd.args(["score", "--backend", "flex", "--unknown", "error", "--checkpoint"]).arg(run);
    cmd.arg("--pairs").arg(&pairs).arg("--out").arg(d.join("scores.csv"));
    refused(cmd, &d, &[&pairs.display().to_string(), "nobody", "nothing"]);
}

#[test]
fn users_file_with_unknown_ids() {
    let run = trained_run();
    let d = temp_dir("users");
    let users = write(&d, "users.txt", "1\nnobody\n");
    let mut cmd = ncf();
    cmd.args(["recommend", "--backend", "flex", "--unknown-users", "error", "--checkpoint"]).arg(run);
    cmd.arg("--users").arg(&users).arg("--out").arg(d.join("recs.csv"));
    refused(cmd, &d, &[&users.display().to_string(), "nobody"]);
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Asserts that `ncf train --out DIR/run` with `args` is refused naming `needles`, leaving nothing
/// in `dir`.
fn train_refuses(dir: &Path, args: &[&str], needles: &[&str]) {
    train_refuses_out(dir, args, &dir.join("run"), needles);
}

/// [`train_refuses`] with the run directory `out`.
fn train_refuses_out(dir: &Path, args: &[&str], out: &Path, needles: &[&str]) {
    let mut cmd = ncf();
    cmd.args(["train", "--backend", "flex", "--epochs", "1"]).args(args).arg("--out").arg(out);
    refused(cmd, dir, needles);
}

#[test]
fn config_with_an_unknown_key() {
    let d = temp_dir("config-key");
    let config = write(&d, "typo.toml", "[train]\nepoch = 3\n");
    let shown = config.display().to_string();
    train_refuses(&d, &["--config", &shown], &[&shown, "epoch"]);
}

#[test]
fn config_with_a_wrong_type() {
    let d = temp_dir("config-type");
    let config = write(&d, "typed.toml", "[train]\nbatch_size = \"big\"\n");
    let shown = config.display().to_string();
    train_refuses(&d, &["--config", &shown], &[&shown, "batch_size", "big"]);
}

#[test]
fn set_with_an_unknown_key_or_a_wrong_type() {
    let d = temp_dir("set");
    train_refuses(&d, &["--set", "train.epoch=3"], &["epoch"]);
    train_refuses(&d, &["--set", "train.batch_size=big"], &["batch_size", "big"]);
}

#[test]
fn set_and_a_flag_for_the_same_key() {
    let d = temp_dir("set-flag");
    // `train_refuses` passes --epochs 1.
    train_refuses(&d, &["--set", "train.epochs=3"], &["--epochs", "--set train.epochs=3", "pass one of them"]);
}

// ---------------------------------------------------------------------------------------------
// Output paths

/// A directory this process cannot create files in: a read-only one, or for root (who writes
/// anywhere permissions allow) `/sys`, or else a path under a file, which no one can create.
fn read_only_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let writable = |d: &Path| {
        let probe = d.join(format!(".probe-{}", std::process::id()));
        let ok = std::fs::write(&probe, b"").is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    };
    if !writable(&ro) {
        ro
    } else if !writable(Path::new("/sys")) {
        PathBuf::from("/sys")
    } else {
        PathBuf::from("/proc/version")
    }
}

/// A small valid interaction file in `dir`.
fn good_data(dir: &Path) -> PathBuf {
    let rows: String = (0..60).map(|r| format!("{},{},{}\n", r % 10, r % 7, r)).collect();
    write(dir, "good.csv", format!("user,item,timestamp\n{rows}"))
}

#[test]
fn output_in_a_missing_directory() {
    let run = trained_run();
    let d = temp_dir("out-missing");
    let out = d.join("missing").join("recs.csv");
    let mut cmd = ncf();
    cmd.args(["recommend", "--backend", "flex", "--checkpoint"]).arg(run).arg("--out").arg(&out);
    refused(cmd, &d, &[&out.display().to_string()]);
}

#[test]
fn output_in_a_read_only_directory() {
    let run = trained_run();
    let d = temp_dir("out-read-only");
    let data = good_data(&d);
    let ro = read_only_dir(&d);
    let out = ro.join("recs.csv");
    let mut cmd = ncf();
    cmd.args(["recommend", "--backend", "flex", "--checkpoint"]).arg(run).arg("--out").arg(&out);
    refused(cmd, &d, &[&out.display().to_string()]);
    let out = ro.join("split");
    let mut cmd = ncf();
    cmd.args(["data", "split"]).arg(&data).arg("--out").arg(&out);
    refused(cmd, &d, &[&out.display().to_string()]);
    let out = ro.join("run");
    train_refuses_out(&d, &["--data", &data.display().to_string()], &out, &[&out.display().to_string()]);
}

/// EASE runs refuse, before writing anything, what they cannot do: a fit larger than the memory
/// available (lowered here by NCF_HOST_MEMORY_BYTES to 64 MiB: the demo's 2,000 items need
/// ~99 MiB), λ ≤ 0, timing in `ncf bench`, several devices and side features.
#[test]
fn ease_refuses_fits_beyond_memory_bad_lambda_and_bench() {
    let d = temp_dir("ease-refusals");
    let mut big = ncf();
    big.env("NCF_HOST_MEMORY_BYTES", (64u64 << 20).to_string()).args(["train", "--backend", "flex", "--model", "ease"]).arg("--out").arg(d.join("run"));
    refused(big, &d, &["keeps an items × items matrix", "64.0 MiB are available", "model.kind = \"mf\""]);
    let mut lambda = ncf();
    lambda.args(["train", "--model", "ease", "--set", "model.ease_lambda=0"]).arg("--out").arg(d.join("run"));
    refused(lambda, &d, &["model.ease_lambda = 0"]);
    let mut bench = ncf();
    bench.args(["bench", "--models", "ease", "--only", "train"]).arg("--out").arg(d.join("bench"));
    refused(bench, &d, &["--models ease"]);
    let mut devices = ncf();
    devices.args(["train", "--backend", "flex", "--model", "ease", "--devices", "0,1"]).arg("--out").arg(d.join("run"));
    refused(devices, &d, &["--devices 0,1: EASE is fitted on one device"]);
    let features = write(&d, "users.csv", "user,age\n1,20\n");
    let mut featured = ncf();
    featured.args(["train", "--backend", "flex", "--model", "ease", "--user-features"]).arg(&features).arg("--out").arg(d.join("run"));
    refused(featured, &d, &["learns from interactions alone"]);
}

//! Snapshot paths that are not plain files (issue 13, items 2, 3 and 8): `--save-state … --force`
//! never replaces a symlink, FIFO, directory or device, an unwritable destination is refused
//! before the model runs, and `--resume` opens only regular files and refuses a foreign or padded
//! one after reading its 32-byte preamble, whatever its size.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use hybrid_decode::model::snapshot::MAGIC;
use hybrid_decode::model::{Snapshot, SnapshotError, WriteMode};
use serde_json::json;

/// A snapshot of the tiny Qwen3-Next fixture after two greedy tokens.
fn small_snapshot() -> Snapshot {
    let mut engine = load("qwen3-next-tiny", "cpu");
    let (generated, _) = generate(&mut engine, greedy(), PROMPT, 2);
    let history = [PROMPT, &generated].concat();
    engine
        .model_mut()
        .snapshot(&history, json!({}))
        .expect("snapshot")
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Runs `f` on another thread and fails the test if it has not returned within 20 s (a read
/// that blocks on a FIFO would otherwise hang the whole test run).
fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("blocked for 20 s: the path was opened as if it were a file")
}

#[test]
fn writes_never_replace_a_symlink_fifo_or_directory() {
    let snapshot = small_snapshot();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, b"keep me").unwrap();
    let link = dir.path().join("link.snap");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.path().join("fifo.snap");
    mkfifo(&fifo);
    let subdir = dir.path().join("subdir.snap");
    std::fs::create_dir(&subdir).unwrap();

    for (path, kind) in [
        (&link, "symbolic link"),
        (&fifo, "FIFO"),
        (&subdir, "directory"),
    ] {
        for mode in [WriteMode::Overwrite, WriteMode::CreateNew] {
            let check = Snapshot::check_destination(path, mode);
            let write = snapshot.write(path, mode);
            for err in [check.unwrap_err(), write.unwrap_err()] {
                if mode == WriteMode::Overwrite {
                    assert!(
                        matches!(err, SnapshotError::NotARegularFile { .. }),
                        "{err}"
                    );
                    assert!(err.to_string().contains(kind), "{err}");
                }
                assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
            }
        }
    }
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_symlink(), "the symlink itself is kept");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(subdir.is_dir());
    // Nothing else appeared (no temporary files left behind).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

#[test]
fn generate_refuses_a_bad_destination_before_generating() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.snap");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    // 100 000 tokens would take minutes: a refusal within the time limit proves it came first.
    let started = Instant::now();
    assert_fails(
        "generate",
        &[
            "--max-new-tokens",
            "100000",
            "--save-state",
            fifo,
            "--force",
        ],
        "FIFO",
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_fails(
        "generate",
        &[
            "--max-new-tokens",
            "100000",
            "--save-state",
            "/no/such/dir/s.snap",
        ],
        "/no/such/dir",
    );

    // A directory that exists but refuses new files (skipped where permissions do not bind,
    // e.g. as root).
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let mut perms = std::fs::metadata(&locked).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(&locked, perms).unwrap();
    if std::fs::write(locked.join("probe"), b"").is_err() {
        let dest = locked.join("s.snap");
        assert_fails(
            "generate",
            &[
                "--max-new-tokens",
                "100000",
                "--save-state",
                dest.to_str().unwrap(),
            ],
            "locked",
        );
    }
}

#[test]
fn resume_reads_only_regular_files_and_checks_the_preamble_first() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.snap");
    mkfifo(&fifo);
    for (path, kind) in [
        (fifo.clone(), "FIFO"),
        (Path::new("/dev/zero").to_path_buf(), "device"),
        (dir.path().to_path_buf(), "directory"),
    ] {
        let err = within_20s(move || Snapshot::read(&path).unwrap_err().to_string());
        assert!(err.contains(kind), "{err}");
    }
    assert_fails("generate", &["--resume", "/dev/zero"], "device");

    // A 6 GiB sparse file: refused on its first bytes, never read (reading it whole would take
    // 6 GiB of memory and far longer than this limit).
    let sparse = dir.path().join("sparse.snap");
    let file = std::fs::File::create(&sparse).unwrap();
    file.set_len(6 << 30).unwrap();
    drop(file);
    let err = within_20s({
        let sparse = sparse.clone();
        move || Snapshot::read(&sparse).unwrap_err()
    });
    assert!(matches!(err, SnapshotError::NotASnapshot { .. }), "{err}");

    // A valid preamble whose lengths disagree with the file's size: refused the same way.
    let snapshot = small_snapshot().to_bytes();
    assert_eq!(snapshot[..8], MAGIC);
    let padded = dir.path().join("padded.snap");
    std::fs::write(&padded, &snapshot).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&padded)
        .unwrap()
        .set_len(6 << 30)
        .unwrap();
    let err = within_20s(move || Snapshot::read(&padded).unwrap_err().to_string());
    assert!(err.contains("unexpected bytes after the checksum"), "{err}");

    // A header length over the limit is refused before anything is allocated for it, even
    // when the (sparse) file is as long as the preamble says.
    let header_len: u64 = 300 << 20;
    let mut preamble = snapshot[..32].to_vec();
    preamble[16..24].copy_from_slice(&header_len.to_le_bytes());
    preamble[24..32].copy_from_slice(&0u64.to_le_bytes());
    let path = dir.path().join("huge-header.snap");
    std::fs::write(&path, &preamble).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(32 + header_len + 4)
        .unwrap();
    let err = Snapshot::read(&path).unwrap_err().to_string();
    assert!(err.contains("limit"), "{err}");
}

/// Issue 13, item 7: an OS error is printed once — as the cause under our message — not also
/// inside the message itself.
#[test]
fn an_os_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.snap");
    let out = run("generate", &["--resume", missing.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("missing.snap"), "names the file: {err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    let err = Snapshot::read(&missing).unwrap_err();
    assert!(!err.to_string().contains("No such file"), "{err}");
    let cause = std::error::Error::source(&err).expect("the OS error as the source");
    assert!(cause.to_string().contains("No such file"), "{cause}");
}

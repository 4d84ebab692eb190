//! What the example programs share about their command lines.

use std::ffi::OsString;

/// A command-line argument that is not valid UTF-8.
#[derive(Debug, thiserror::Error)]
#[error(
    "argument {position} ({lossy:?}) is not valid UTF-8; flags, prompts and paths must be UTF-8 \
     text (rename the file, or give the prompt as --prompt-ids)"
)]
pub struct NonUtf8Argument {
    /// 1-based position after the program name.
    pub position: usize,
    /// The argument with invalid bytes replaced by U+FFFD, for the message.
    pub lossy: String,
}

/// The process's arguments after the program name, each checked to be UTF-8:
/// `std::env::args` panics on the first that is not.
pub fn utf8_args() -> Result<Vec<String>, NonUtf8Argument> {
    utf8(std::env::args_os().skip(1))
}

fn utf8(args: impl Iterator<Item = OsString>) -> Result<Vec<String>, NonUtf8Argument> {
    args.enumerate()
        .map(|(i, arg)| {
            arg.into_string().map_err(|bad| NonUtf8Argument {
                position: i + 1,
                lossy: bad.to_string_lossy().into_owned(),
            })
        })
        .collect()
}

/// The `--gdn-backend help` text: every backend compiled in, what it is, and whether it can
/// start on this machine (with the reason when it cannot).
pub fn backend_list() -> String {
    let registry = crate::gdn_registry();
    let mut out = String::from("GDN backends (--gdn-backend NAME):\n");
    for entry in registry.entries() {
        let status = match &entry.availability {
            Ok(_) => "available".to_string(),
            Err(reason) => format!("unavailable: {reason}"),
        };
        out.push_str(&format!(
            "  {:<13} {} [{status}]\n",
            entry.name, entry.summary
        ));
    }
    out
}

/// `--threads N` was 0 or far more than this machine has cores.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    /// Outside `1..=max`.
    #[error(
        "--threads {given} must be between 1 and {max} (4 × the {cores} cores this machine has)"
    )]
    OutOfRange {
        /// The value given.
        given: usize,
        /// The largest accepted.
        max: usize,
        /// Cores available to this process.
        cores: usize,
    },
    /// The hot pool already runs with another size.
    #[error("--threads")]
    AlreadyStarted(#[from] hybrid_pool::AlreadyStarted),
}

/// Applies `--threads N`: sizes the hot thread pool that every parallel kernel of a decode step
/// and the `cpu` GDN backend share. Must come before the model is loaded. More than 4 threads
/// per core only adds switching (and 10,000 would start 10,000 threads), so it is refused.
pub fn set_threads(threads: usize) -> Result<(), ThreadsError> {
    check_threads(threads)?;
    hybrid_pool::configure_threads(threads)?;
    Ok(())
}

/// The range rule of `--threads` alone (1 to 4 × the cores), for programs that size their own
/// pools (gdn_bench).
pub fn check_threads(threads: usize) -> Result<(), ThreadsError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = 4 * cores;
    if !(1..=max).contains(&threads) {
        return Err(ThreadsError::OutOfRange {
            given: threads,
            max,
            cores,
        });
    }
    Ok(())
}

/// An output file a flag names (`--svg FILE`) that could not be written at the end of a run.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {problem}")]
pub struct OutputPathError {
    /// The flag.
    pub flag: &'static str,
    /// The path given.
    pub path: std::path::PathBuf,
    /// What is wrong and what to do.
    pub problem: String,
}

/// Checks before a long run that `path` can be written at its end: not a directory, and its
/// directory exists (so a typo does not waste the run).
pub fn check_output_file(
    flag: &'static str,
    path: &std::path::Path,
) -> Result<(), OutputPathError> {
    let error = |problem: String| OutputPathError {
        flag,
        path: path.to_path_buf(),
        problem,
    };
    if path.is_dir() {
        return Err(error("is a directory; give a file name".into()));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Err(error(format!(
            "the directory {} does not exist (create it first)",
            dir.display()
        )));
    }
    Ok(())
}

/// The GDN backend when `--gdn-backend` is not given: `cuda` for a model on a GPU
/// (`--device cuda[:N]`: its GDN state beside the rest of the model), else `cpu`.
pub fn default_gdn_backend(device: Option<&str>) -> &'static str {
    match device.map(hybrid_model::cuda_ordinal) {
        Some(Ok(Some(_))) => "cuda",
        _ => "cpu",
    }
}

/// `options` for the GDN backend `name` of a model on `--device` `device`: the `cuda` backend
/// opens the model's GPU (`cuda:N`) unless a device index was given. Reads the flag's text only
/// (a bad one is refused where the model's device is opened).
pub fn gdn_options_for(
    name: &str,
    device: Option<&str>,
    options: &crate::gdn::BackendOptions,
) -> crate::gdn::BackendOptions {
    let mut options = options.clone();
    let gpu = device.and_then(|spec| hybrid_model::cuda_ordinal(spec).ok().flatten());
    if let (Some(gpu), "cuda") = (gpu, name) {
        if options.device_index == 0 {
            options = options.with_device_index(gpu);
        }
    }
    options
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    #[test]
    fn names_the_argument_that_is_not_utf8() {
        let args = vec![
            OsString::from("--prompt"),
            OsString::from_vec(vec![b'a', 0xff]),
        ];
        let err = utf8(args.into_iter()).unwrap_err();
        assert_eq!(err.position, 2);
        assert!(
            err.to_string().contains("argument 2 (\"a\u{fffd}\")"),
            "{err}"
        );
        assert_eq!(utf8([OsString::from("x")].into_iter()).unwrap(), ["x"]);
    }
}

#[cfg(test)]
mod device_flag_tests {
    use super::*;
    use crate::gdn::BackendOptions;

    #[test]
    fn the_model_gpu_picks_the_cuda_backend_and_its_device() {
        assert_eq!(default_gdn_backend(None), "cpu");
        assert_eq!(default_gdn_backend(Some("cpu")), "cpu");
        assert_eq!(default_gdn_backend(Some("cuda:1")), "cuda");
        let plain = BackendOptions::default();
        let index = |name, device| gdn_options_for(name, device, &plain).device_index;
        assert_eq!(index("cuda", Some("cuda:2")), 2);
        assert_eq!(index("cuda", Some("CUDA")), 0);
        assert_eq!(index("cpu", Some("cuda:2")), 0);
        assert_eq!(index("cuda", Some("cpu")), 0);
        assert_eq!(index("cuda", Some("cuda:x")), 0);
        // An index given for the backend itself is kept.
        let given = BackendOptions::default().with_device_index(3);
        assert_eq!(
            gdn_options_for("cuda", Some("cuda:2"), &given).device_index,
            3
        );
    }
}

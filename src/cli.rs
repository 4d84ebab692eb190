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

//! The kernel as the host drives it: its interface ([`abi`]), the [`KernelDevice`] a backend sends
//! invocations to, and the two devices — a card through XRT ([`crate::xrt::XrtDevice`]) and the
//! in-process C-simulation of the same C++ ([`csim::SimDevice`]).

pub mod abi;
pub mod csim;

use abi::{KernelArgs, KernelFault, KernelInfo, Op, StatusWords};

use crate::error::XrtError;

/// Something that runs the `gdn_kernel` compute unit: one invocation at a time, with its input
/// buffer written from `input` (the segments back to back), its output buffer read into `output`,
/// and the status words returned.
pub trait KernelDevice: Send {
    /// The device in words (for `BackendInfo::device`).
    fn describe(&self) -> String;

    /// One kernel invocation. Errors are transport or run failures; the kernel's own verdict is
    /// in the returned status words (see [`check_status`]).
    fn invoke(
        &mut self,
        args: &KernelArgs,
        input: &[&[f32]],
        output: &mut [f32],
    ) -> Result<StatusWords, XrtError>;
}

/// The kernel's verdict: `Ok` for status code 0, otherwise [`XrtError::Kernel`].
pub fn check_status(op: Op, words: &StatusWords) -> Result<(), XrtError> {
    match words[abi::word::CODE] {
        0 => Ok(()),
        code => Err(XrtError::Kernel {
            op,
            fault: KernelFault::from_code(code),
            detail: words[abi::word::DETAIL],
            limit: words[abi::word::LIMIT],
        }),
    }
}

/// Runs an invocation and checks the kernel's status.
pub fn run_checked(
    device: &mut dyn KernelDevice,
    args: &KernelArgs,
    input: &[&[f32]],
    output: &mut [f32],
) -> Result<(), XrtError> {
    let words = device.invoke(args, input, output)?;
    check_status(args.op, &words)
}

/// Asks the kernel for its design point, limits and usage, and checks its ABI version.
pub fn query_info(device: &mut dyn KernelDevice) -> Result<KernelInfo, XrtError> {
    let words = device.invoke(&KernelArgs::new(Op::Info, 0, 0), &[], &mut [])?;
    check_status(Op::Info, &words)?;
    KernelInfo::from_status(&words).map_err(|found| XrtError::AbiMismatch {
        expected: abi::ABI_VERSION,
        found,
    })
}

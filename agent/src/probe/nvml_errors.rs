//! How the NVML backend treats an NVML error: skip the field quietly, warn
//! and retry, give up on the GPU, or give up on NVML. Shared by the polling
//! probe (`nvml`) and the Xid event thread (`nvml_events`), which both talk
//! to the driver and must agree on what a lost GPU looks like.

use nvml_wrapper::error::NvmlError;

/// How an NVML error on one reading should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// This GPU or driver cannot give the reading (not supported, no
    /// permission, symbol missing in an older driver). The field is absent
    /// and will stay so: not worth a warning on every sample.
    Unsupported,
    /// May well succeed on the next sample.
    Transient,
    /// The GPU is gone or needs a reset. Stop querying it for this sample:
    /// calls on a lost GPU can be slow and they cannot succeed.
    FatalForGpu,
    /// NVML itself is unusable (driver unloaded, library/kernel mismatch).
    FatalForNvml,
}

pub fn classify(err: &NvmlError) -> ErrorClass {
    match err {
        NvmlError::NotSupported
        | NvmlError::NoPermission
        | NvmlError::FunctionNotFound
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::NotFound
        | NvmlError::NoData
        | NvmlError::VgpuEccNotSupported => ErrorClass::Unsupported,
        NvmlError::GpuLost | NvmlError::ResetRequired => ErrorClass::FatalForGpu,
        NvmlError::Uninitialized
        | NvmlError::DriverNotLoaded
        | NvmlError::LibRmVersionMismatch
        | NvmlError::LibraryNotFound
        | NvmlError::LibloadingError(_) => ErrorClass::FatalForNvml,
        // Unknown, Timeout, IrqIssue, InUse and the wrapper's own decoding
        // errors: nothing says the next try will fail too.
        _ => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(&NvmlError::GpuLost), ErrorClass::FatalForGpu);
        assert_eq!(classify(&NvmlError::ResetRequired), ErrorClass::FatalForGpu);
        assert_eq!(classify(&NvmlError::NotSupported), ErrorClass::Unsupported);
        assert_eq!(classify(&NvmlError::NoPermission), ErrorClass::Unsupported);
        assert_eq!(
            classify(&NvmlError::FunctionNotFound),
            ErrorClass::Unsupported
        );
        assert_eq!(
            classify(&NvmlError::FailedToLoadSymbol(
                "nvmlDeviceGetPowerUsage".into()
            )),
            ErrorClass::Unsupported
        );
        assert_eq!(classify(&NvmlError::Unknown), ErrorClass::Transient);
        assert_eq!(classify(&NvmlError::Timeout), ErrorClass::Transient);
        assert_eq!(classify(&NvmlError::InUse), ErrorClass::Transient);
        assert_eq!(
            classify(&NvmlError::DriverNotLoaded),
            ErrorClass::FatalForNvml
        );
        assert_eq!(
            classify(&NvmlError::Uninitialized),
            ErrorClass::FatalForNvml
        );
        assert_eq!(
            classify(&NvmlError::LibRmVersionMismatch),
            ErrorClass::FatalForNvml
        );
    }
}

//! fake-nvml: a stand-in `libnvidia-ml.so` for tests on machines without a
//! GPU. It exports the NVML C functions sup-agent calls through
//! nvml-wrapper, and answers them from a JSON state file named by
//! `FAKE_NVML_STATE` that a test rewrites while the agent runs (format in
//! README.md). Only the functions the agent uses exist: nvml-wrapper
//! resolves symbols lazily, so a call to anything else fails cleanly with
//! "function not found" instead of misbehaving.
//!
//! Handles are small integers dressed as pointers (GPU index + 1, event set
//! id); nothing here ever dereferences a pointer it handed out.

// This crate's whole purpose is to export C functions; every pointer a
// caller passes is checked for null before it is written through.
#![allow(unsafe_code)]
// The safety contract of each function is NVML's own (nvml.h).
#![allow(clippy::missing_safety_doc)]
// Matches use NVML's own C constant names, as bindgen spells them.
#![allow(non_upper_case_globals)]

mod state;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, CStr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nvml_wrapper_sys::bindings::field_id::*;
use nvml_wrapper_sys::bindings::*;

use crate::state::{recovery_action_code, Gpu, Runtime};

const SUCCESS: nvmlReturn_t = nvmlReturn_enum_NVML_SUCCESS;
const UNINITIALIZED: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
const INVALID_ARGUMENT: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
const NOT_SUPPORTED: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const INSUFFICIENT_SIZE: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
const TIMEOUT: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_TIMEOUT;
const GPU_IS_LOST: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST;
const UNKNOWN: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_UNKNOWN;

/// Event types the fake claims to support (single/double-bit ECC, P-state,
/// critical Xid, clock); only Xids are ever delivered.
const SUPPORTED_EVENTS: c_ulonglong = 0x1F;
const SUPPORTED_THROTTLE_REASONS: c_ulonglong = 0x1FF;
/// How often a waiting nvmlEventSetWait looks at the state again: often
/// enough for Xid tests, rare enough that the fake's own polling stays out
/// of the agent's CPU numbers (real NVML blocks in the kernel instead).
const WAIT_POLL: Duration = Duration::from_millis(50);

type Ret = Result<(), nvmlReturn_t>;

struct Driver {
    runtime: Runtime,
    /// Event set id -> (GPU index, event mask) registrations.
    sets: HashMap<usize, Vec<(u32, c_ulonglong)>>,
    next_set: usize,
}

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Driver>> {
    // A panic while holding the lock cannot leave the state half-written in
    // a way that matters to a test double; keep serving.
    DRIVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn code(result: Ret) -> nvmlReturn_t {
    match result {
        Ok(()) => SUCCESS,
        Err(code) => code,
    }
}

/// Runs `f` on the initialized driver, with the state file re-read if it
/// changed.
fn with_driver(f: impl FnOnce(&mut Driver) -> Ret) -> nvmlReturn_t {
    let mut guard = lock();
    match guard.as_mut() {
        Some(driver) if driver.runtime.init_count > 0 => {
            driver.runtime.refresh();
            code(f(driver))
        }
        _ => UNINITIALIZED,
    }
}

fn handle_index(device: nvmlDevice_t) -> Result<u32, nvmlReturn_t> {
    let raw = device as usize;
    if raw == 0 {
        return Err(INVALID_ARGUMENT);
    }
    u32::try_from(raw - 1).map_err(|_| INVALID_ARGUMENT)
}

fn handle_of(index: u32) -> nvmlDevice_t {
    (index as usize + 1) as nvmlDevice_t
}

/// Runs `f` on the GPU behind `device`, after the checks every device call
/// makes: a valid handle, the GPU not lost, `feature` supported.
fn with_gpu(device: nvmlDevice_t, feature: &str, f: impl FnOnce(&Gpu) -> Ret) -> nvmlReturn_t {
    with_driver(|driver| {
        let index = handle_index(device)?;
        let snapshot = &driver.runtime.snapshot;
        let gpu = snapshot.gpus.get(index as usize).ok_or(INVALID_ARGUMENT)?;
        // A GPU that dropped out of the count is as good as lost to a
        // handle obtained before.
        if gpu.spec.lost || index >= snapshot.visible {
            return Err(GPU_IS_LOST);
        }
        if !feature.is_empty() && !gpu.supports(feature) {
            return Err(NOT_SUPPORTED);
        }
        f(gpu)
    })
}

unsafe fn put<T>(out: *mut T, value: T) -> Ret {
    if out.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    out.write(value);
    Ok(())
}

/// Copies `text` and its NUL into a caller's buffer of `length` bytes.
unsafe fn put_str(buf: *mut c_char, length: c_uint, text: &str) -> Ret {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    let bytes = text.as_bytes();
    if bytes.len() + 1 > length as usize {
        return Err(INSUFFICIENT_SIZE);
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
    buf.add(bytes.len()).write(0);
    Ok(())
}

fn fill_c_chars<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (slot, byte) in out.iter_mut().zip(text.bytes().take(N - 1)) {
        *slot = byte as c_char;
    }
    out
}

// ---------------------------------------------------------------------------
// Library lifetime
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    let mut guard = lock();
    if guard.is_none() {
        match Runtime::from_env() {
            Ok(runtime) => {
                *guard = Some(Driver {
                    runtime,
                    sets: HashMap::new(),
                    next_set: 1,
                })
            }
            Err(err) => {
                eprintln!("fake-nvml: cannot initialize: {err}");
                return UNKNOWN;
            }
        }
    }
    let Some(driver) = guard.as_mut() else {
        return UNKNOWN;
    };
    driver.runtime.refresh();
    if let Some(error) = &driver.runtime.snapshot.init_error {
        return match error.as_str() {
            "driver_not_loaded" => nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED,
            "no_permission" => nvmlReturn_enum_NVML_ERROR_NO_PERMISSION,
            "lib_rm_version_mismatch" => nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH,
            _ => UNKNOWN,
        };
    }
    driver.runtime.init_count += 1;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    nvmlInit_v2()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    let mut guard = lock();
    match guard.as_mut() {
        Some(driver) if driver.runtime.init_count > 0 => {
            driver.runtime.init_count -= 1;
            SUCCESS
        }
        _ => UNINITIALIZED,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    error_string(result).as_ptr()
}

fn error_string(result: nvmlReturn_t) -> &'static CStr {
    match result {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        nvmlReturn_enum_NVML_ERROR_NO_PERMISSION => c"Insufficient Permissions",
        INSUFFICIENT_SIZE => c"Insufficient Size",
        nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        TIMEOUT => c"Timeout",
        GPU_IS_LOST => c"GPU is lost",
        nvmlReturn_enum_NVML_ERROR_LIB_RM_VERSION_MISMATCH => {
            c"RM has detected an NVML/RM version mismatch."
        }
        _ => c"Unknown Error",
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    with_driver(|d| put_str(version, length, &d.runtime.snapshot.driver_version))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    with_driver(|d| {
        put_str(
            version,
            length,
            &format!("12.{}", d.runtime.snapshot.driver_version),
        )
    })
}

// ---------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    with_driver(|d| put(count, d.runtime.snapshot.visible))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    with_driver(|d| {
        let snapshot = &d.runtime.snapshot;
        if index >= snapshot.visible {
            return Err(INVALID_ARGUMENT);
        }
        if snapshot
            .gpus
            .get(index as usize)
            .is_some_and(|g| g.spec.lost)
        {
            return Err(GPU_IS_LOST);
        }
        put(device, handle_of(index))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "", |_| put(index, handle_index(device)?))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "", |g| put_str(uuid, length, &g.uuid))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "", |g| put_str(name, length, &g.spec.name))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    with_gpu(device, "", |g| {
        let (domain, bus, dev) = parse_bus_id(&g.pci_bus_id);
        let legacy = format!("{:04X}:{bus:02X}:{dev:02X}.0", domain & 0xFFFF);
        put(
            pci,
            nvmlPciInfo_t {
                busIdLegacy: fill_c_chars(&legacy),
                domain,
                bus,
                device: dev,
                // H100 SXM5 device and subsystem ids.
                pciDeviceId: 0x2330_10DE,
                pciSubSystemId: 0x16C1_10DE,
                busId: fill_c_chars(&g.pci_bus_id),
            },
        )
    })
}

/// "DDDDDDDD:BB:DD.F" -> (domain, bus, device); zeros where unparsable,
/// since a test may give any text it likes.
fn parse_bus_id(text: &str) -> (c_uint, c_uint, c_uint) {
    let mut parts = text.split([':', '.']);
    let mut next = || {
        parts
            .next()
            .and_then(|p| c_uint::from_str_radix(p, 16).ok())
            .unwrap_or(0)
    };
    (next(), next(), next())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    with_gpu(device, "memory", |g| {
        let (total, used) = (g.spec.memory_total_bytes, g.spec.memory_used_bytes);
        put(
            memory,
            nvmlMemory_t {
                total,
                free: total.saturating_sub(used),
                used,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    with_gpu(device, "memory", |g| {
        if memory.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let version = (*memory).version;
        let (total, used) = (g.spec.memory_total_bytes, g.spec.memory_used_bytes);
        put(
            memory,
            nvmlMemory_v2_t {
                version,
                total,
                reserved: 0,
                free: total.saturating_sub(used),
                used,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "temperature", |g| {
        if sensor != nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
            return Err(INVALID_ARGUMENT);
        }
        put(temp, g.spec.temperature_c)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: nvmlDevice_t,
    power: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "power", |g| put(power, g.spec.power_mw))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    with_gpu(device, "utilization", |g| {
        put(
            utilization,
            nvmlUtilization_t {
                gpu: g.spec.utilization_gpu_pct,
                memory: g.spec.utilization_memory_pct,
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetClockInfo(
    device: nvmlDevice_t,
    clock_type: nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "clocks", |g| {
        put(
            clock,
            match clock_type {
                nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM => {
                    g.spec.sm_clock_mhz
                }
                nvmlClockType_enum_NVML_CLOCK_MEM => g.spec.memory_clock_mhz,
                nvmlClockType_enum_NVML_CLOCK_VIDEO => 1755,
                _ => return Err(INVALID_ARGUMENT),
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxClockInfo(
    device: nvmlDevice_t,
    clock_type: nvmlClockType_t,
    clock: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "clocks", |_| {
        put(
            clock,
            match clock_type {
                nvmlClockType_enum_NVML_CLOCK_GRAPHICS | nvmlClockType_enum_NVML_CLOCK_SM => 1980,
                nvmlClockType_enum_NVML_CLOCK_MEM => 2619,
                nvmlClockType_enum_NVML_CLOCK_VIDEO => 1755,
                _ => return Err(INVALID_ARGUMENT),
            },
        )
    })
}

// ---------------------------------------------------------------------------
// Memory health
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: nvmlDevice_t,
    error_type: nvmlMemoryErrorType_t,
    _counter_type: nvmlEccCounterType_t,
    count: *mut c_ulonglong,
) -> nvmlReturn_t {
    // Volatile and aggregate counters read the same here: the fake has
    // lived only since the last "driver load".
    with_gpu(device, "ecc", |g| {
        put(
            count,
            match error_type {
                nvmlMemoryErrorType_enum_NVML_MEMORY_ERROR_TYPE_CORRECTED => {
                    g.spec.ecc_sbe_volatile
                }
                nvmlMemoryErrorType_enum_NVML_MEMORY_ERROR_TYPE_UNCORRECTED => {
                    g.spec.ecc_dbe_volatile
                }
                _ => return Err(INVALID_ARGUMENT),
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: nvmlDevice_t,
    corr_rows: *mut c_uint,
    unc_rows: *mut c_uint,
    is_pending: *mut c_uint,
    failure_occurred: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "remapping", |g| {
        put(corr_rows, g.spec.remapped_correctable)?;
        put(unc_rows, g.spec.remapped_uncorrectable)?;
        put(is_pending, c_uint::from(g.spec.remap_pending))?;
        put(failure_occurred, c_uint::from(g.spec.remap_failure))
    })
}

fn retired_count(g: &Gpu, cause: nvmlPageRetirementCause_t) -> Result<c_uint, nvmlReturn_t> {
    match cause {
        nvmlPageRetirementCause_enum_NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS => {
            Ok(g.spec.retired_sbe)
        }
        nvmlPageRetirementCause_enum_NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR => {
            Ok(g.spec.retired_dbe)
        }
        _ => Err(INVALID_ARGUMENT),
    }
}

/// NVML's two-call protocol: with too small a buffer, say how many and
/// answer INSUFFICIENT_SIZE.
unsafe fn put_pages(
    total: c_uint,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> Ret {
    if page_count.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    let room = *page_count;
    *page_count = total;
    if room < total || (total > 0 && addresses.is_null()) {
        return if total == 0 {
            Ok(())
        } else {
            Err(INSUFFICIENT_SIZE)
        };
    }
    for i in 0..total as usize {
        addresses
            .add(i)
            .write(0x1000_0000 + (i as c_ulonglong) * 0x1000);
        if !timestamps.is_null() {
            timestamps.add(i).write(1_700_000_000 + i as c_ulonglong);
        }
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages(
    device: nvmlDevice_t,
    cause: nvmlPageRetirementCause_t,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
) -> nvmlReturn_t {
    with_gpu(device, "retired_pages", |g| {
        put_pages(
            retired_count(g, cause)?,
            page_count,
            addresses,
            std::ptr::null_mut(),
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages_v2(
    device: nvmlDevice_t,
    cause: nvmlPageRetirementCause_t,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> nvmlReturn_t {
    with_gpu(device, "retired_pages", |g| {
        put_pages(retired_count(g, cause)?, page_count, addresses, timestamps)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPagesPendingStatus(
    device: nvmlDevice_t,
    is_pending: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    with_gpu(device, "retired_pages", |g| {
        put(
            is_pending,
            if g.spec.retired_pending {
                nvmlEnableState_enum_NVML_FEATURE_ENABLED
            } else {
                nvmlEnableState_enum_NVML_FEATURE_DISABLED
            },
        )
    })
}

// ---------------------------------------------------------------------------
// Links and clocks
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrPcieLinkGeneration(
    device: nvmlDevice_t,
    link_gen: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "pcie", |g| put(link_gen, g.spec.pcie_gen))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrPcieLinkWidth(
    device: nvmlDevice_t,
    width: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "pcie", |g| put(width, g.spec.pcie_width))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxPcieLinkGeneration(
    device: nvmlDevice_t,
    link_gen: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "pcie", |g| put(link_gen, g.spec.pcie_gen_max))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxPcieLinkWidth(
    device: nvmlDevice_t,
    width: *mut c_uint,
) -> nvmlReturn_t {
    with_gpu(device, "pcie", |g| put(width, g.spec.pcie_width_max))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    device: nvmlDevice_t,
    link: c_uint,
    is_active: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    with_gpu(device, "nvlink", |g| {
        if g.spec.nvlink_links == 0 {
            return Err(NOT_SUPPORTED);
        }
        if link >= g.spec.nvlink_links {
            return Err(INVALID_ARGUMENT);
        }
        put(
            is_active,
            if g.spec.nvlink_down.contains(&link) {
                nvmlEnableState_enum_NVML_FEATURE_DISABLED
            } else {
                nvmlEnableState_enum_NVML_FEATURE_ENABLED
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    with_gpu(device, "throttle", |g| {
        put(reasons, g.spec.throttle_reasons)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksEventReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    nvmlDeviceGetCurrentClocksThrottleReasons(device, reasons)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedClocksThrottleReasons(
    device: nvmlDevice_t,
    reasons: *mut c_ulonglong,
) -> nvmlReturn_t {
    with_gpu(device, "throttle", |_| {
        put(reasons, SUPPORTED_THROTTLE_REASONS)
    })
}

// ---------------------------------------------------------------------------
// Field values
// ---------------------------------------------------------------------------

enum Value {
    UInt(c_uint),
    ULongLong(c_ulonglong),
}

/// One field as NVML's field-value API reports it; Err is that field's own
/// nvmlReturn (the call as a whole still succeeds).
fn field_value(g: &Gpu, field: c_uint) -> Result<Value, nvmlReturn_t> {
    let need = |feature: &str| {
        if g.supports(feature) {
            Ok(())
        } else {
            Err(NOT_SUPPORTED)
        }
    };
    let s = &g.spec;
    match field {
        NVML_FI_DEV_ECC_SBE_VOL_TOTAL => need("ecc").map(|()| Value::ULongLong(s.ecc_sbe_volatile)),
        NVML_FI_DEV_ECC_DBE_VOL_TOTAL => need("ecc").map(|()| Value::ULongLong(s.ecc_dbe_volatile)),
        NVML_FI_DEV_RETIRED_SBE => {
            need("retired_pages").map(|()| Value::ULongLong(s.retired_sbe.into()))
        }
        NVML_FI_DEV_RETIRED_DBE => {
            need("retired_pages").map(|()| Value::ULongLong(s.retired_dbe.into()))
        }
        NVML_FI_DEV_RETIRED_PENDING => {
            need("retired_pages").map(|()| Value::UInt(s.retired_pending.into()))
        }
        NVML_FI_DEV_NVLINK_LINK_COUNT => {
            need("nvlink")?;
            if s.nvlink_links == 0 {
                return Err(NOT_SUPPORTED);
            }
            Ok(Value::UInt(s.nvlink_links))
        }
        NVML_FI_DEV_REMAPPED_COR => need("remapping").map(|()| Value::UInt(s.remapped_correctable)),
        NVML_FI_DEV_REMAPPED_UNC => {
            need("remapping").map(|()| Value::UInt(s.remapped_uncorrectable))
        }
        NVML_FI_DEV_REMAPPED_PENDING => {
            need("remapping").map(|()| Value::UInt(s.remap_pending.into()))
        }
        NVML_FI_DEV_REMAPPED_FAILURE => {
            need("remapping").map(|()| Value::UInt(s.remap_failure.into()))
        }
        NVML_FI_DEV_GET_GPU_RECOVERY_ACTION => {
            need("recovery_action")?;
            // Validated when the state was loaded.
            Ok(Value::UInt(
                recovery_action_code(&s.recovery_action).unwrap_or_default(),
            ))
        }
        _ => Err(NOT_SUPPORTED),
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: nvmlDevice_t,
    values_count: c_int,
    values: *mut nvmlFieldValue_t,
) -> nvmlReturn_t {
    with_gpu(device, "field_values", |g| {
        let Ok(count) = usize::try_from(values_count) else {
            return Err(INVALID_ARGUMENT);
        };
        if values.is_null() && count > 0 {
            return Err(INVALID_ARGUMENT);
        }
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        for i in 0..count {
            let slot = &mut *values.add(i);
            slot.timestamp = now_us;
            slot.latencyUsec = 0;
            match field_value(g, slot.fieldId) {
                Ok(Value::UInt(v)) => {
                    slot.valueType = nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT;
                    slot.value = nvmlValue_t { uiVal: v };
                    slot.nvmlReturn = SUCCESS;
                }
                Ok(Value::ULongLong(v)) => {
                    slot.valueType = nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
                    slot.value = nvmlValue_t { ullVal: v };
                    slot.nvmlReturn = SUCCESS;
                }
                Err(code) => slot.nvmlReturn = code,
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

fn set_id(set: nvmlEventSet_t) -> usize {
    set as usize
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    with_driver(|d| {
        let id = d.next_set;
        d.next_set += 1;
        put(set, id as nvmlEventSet_t)?;
        d.sets.insert(id, Vec::new());
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    with_driver(|d| {
        d.sets
            .remove(&set_id(set))
            .map(|_| ())
            .ok_or(INVALID_ARGUMENT)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    event_types: *mut c_ulonglong,
) -> nvmlReturn_t {
    with_gpu(device, "events", |_| put(event_types, SUPPORTED_EVENTS))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    event_types: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    let status = with_gpu(device, "events", |_| {
        if event_types & !SUPPORTED_EVENTS != 0 {
            return Err(NOT_SUPPORTED);
        }
        Ok(())
    });
    if status != SUCCESS {
        return status;
    }
    with_driver(|d| {
        let index = handle_index(device)?;
        let registrations = d.sets.get_mut(&set_id(set)).ok_or(INVALID_ARGUMENT)?;
        registrations.push((index, event_types));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    if data.is_null() {
        return INVALID_ARGUMENT;
    }
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.into());
    loop {
        let mut found = None;
        let status = with_driver(|d| {
            let registrations = d.sets.get(&set_id(set)).ok_or(INVALID_ARGUMENT)?;
            let wants = |gpu: u32| {
                registrations.iter().any(|&(index, mask)| {
                    index == gpu && mask & c_ulonglong::from(nvmlEventTypeXidCriticalError) != 0
                })
            };
            let next = d
                .runtime
                .snapshot
                .xids
                .iter()
                .find(|x| !d.runtime.delivered.contains(&x.id) && wants(x.gpu))
                .cloned();
            if let Some(xid) = next {
                d.runtime.delivered.insert(xid.id);
                found = Some(xid);
            }
            Ok(())
        });
        if status != SUCCESS {
            return status;
        }
        if let Some(xid) = found {
            data.write(nvmlEventData_t {
                device: handle_of(xid.gpu),
                eventType: c_ulonglong::from(nvmlEventTypeXidCriticalError),
                eventData: xid.xid,
                gpuInstanceId: c_uint::MAX,
                computeInstanceId: c_uint::MAX,
            });
            return SUCCESS;
        }
        let now = Instant::now();
        if now >= deadline {
            return TIMEOUT;
        }
        std::thread::sleep(WAIT_POLL.min(deadline - now));
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlEventSetWait(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    nvmlEventSetWait_v2(set, data, timeout_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_parse_like_nvml_prints_them() {
        assert_eq!(parse_bus_id("00000000:3B:00.0"), (0, 0x3B, 0));
        assert_eq!(parse_bus_id("00000001:8F:01.0"), (1, 0x8F, 1));
        assert_eq!(parse_bus_id("garbage"), (0, 0, 0));
    }

    #[test]
    fn strings_respect_the_caller_buffer() {
        let mut buf = [0 as c_char; 8];
        unsafe {
            assert_eq!(put_str(buf.as_mut_ptr(), 8, "1234567"), Ok(()));
            assert_eq!(
                CStr::from_ptr(buf.as_ptr()).to_str().expect("utf-8"),
                "1234567"
            );
            assert_eq!(
                put_str(buf.as_mut_ptr(), 8, "12345678"),
                Err(INSUFFICIENT_SIZE)
            );
        }
    }
}

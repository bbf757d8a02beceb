//! Xids from the kernel log: the second source, for when NVML itself is
//! wedged (or was never told). The NVIDIA driver logs every Xid as a line
//!
//! ```text
//! NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
//! ```
//!
//! whose shape varies a little across driver versions (with or without
//! `PCI:`, `pid=`, `name=`, channel numbers) and whatever prefix the log
//! path adds (`/dev/kmsg` record headers, dmesg timestamps, journald). The
//! parser looks for the `NVRM: Xid (` marker and ignores everything else; a
//! line it does not understand is skipped, never an error.
//!
//! Sources (`--kernel-log SPEC`): `kmsg` (reads `/dev/kmsg`), `file:PATH`
//! (follows a file, like `tail -F`), `cmd:COMMAND ARGS...` (runs a command
//! and reads its output, e.g. `cmd:journalctl -k -f -n 0 -o cat`). Each
//! starts at the end of the log: Xids from before the agent started are
//! not news.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::thread;
use std::time::Duration;

use sup_proto::v1::GpuInfo;
use tracing::{debug, info, warn};

use super::xid::{XidObservation, XidSink, XidSource};

const MARKER: &str = "NVRM: Xid (";
/// Longest detail text kept from one line.
const MAX_DETAIL: usize = 256;
/// How often a followed file is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// A PCI device address, normalized: NVML writes `00000000:3B:00.0`, the
/// driver's log `0000:3b:00`, and both must compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
}

impl PciAddress {
    /// `[domain:]bus:device[.function]`, hexadecimal, any case.
    pub fn parse(text: &str) -> Option<PciAddress> {
        let text = text.trim();
        let without_function = match text.rsplit_once('.') {
            Some((head, function)) if is_hex(function, 1) => head,
            Some(_) => return None,
            None => text,
        };
        let parts: Vec<&str> = without_function.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [domain, bus, device] => (*domain, *bus, *device),
            [bus, device] => ("0", *bus, *device),
            _ => return None,
        };
        if !is_hex(domain, 8) || !is_hex(bus, 2) || !is_hex(device, 2) {
            return None;
        }
        Some(PciAddress {
            domain: u32::from_str_radix(domain, 16).ok()?,
            bus: u8::from_str_radix(bus, 16).ok()?,
            device: u8::from_str_radix(device, 16).ok()?,
        })
    }
}

fn is_hex(text: &str, max_len: usize) -> bool {
    !text.is_empty() && text.len() <= max_len && text.chars().all(|c| c.is_ascii_hexdigit())
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// One Xid line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelXid {
    pub pci: PciAddress,
    pub xid: u32,
    /// The rest of the line after the code (pid, process, message).
    pub detail: String,
}

/// Parses one kernel log line; `None` for anything that is not an NVIDIA
/// Xid line.
pub fn parse_line(line: &str) -> Option<KernelXid> {
    let at = line.find(MARKER)?;
    let rest = &line[at + MARKER.len()..];
    let (inside, rest) = rest.split_once(')')?;
    let address = inside.trim();
    let address = address.strip_prefix("PCI:").unwrap_or(address);
    let pci = PciAddress::parse(address)?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let xid: u32 = rest[..digits].parse().ok()?;
    let after = &rest[digits..];
    // "79abc" is not an Xid code.
    if !(after.is_empty() || after.starts_with(',') || after.starts_with(char::is_whitespace)) {
        return None;
    }
    let detail = after
        .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
        .trim_end();
    Some(KernelXid {
        pci,
        xid,
        detail: truncate(detail, MAX_DETAIL).to_owned(),
    })
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Where the kernel log comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelLogSpec {
    /// `/dev/kmsg` (or another device with its record format).
    Kmsg(PathBuf),
    /// A file to follow.
    File(PathBuf),
    /// A command whose standard output is the log.
    Command(Vec<String>),
}

impl FromStr for KernelLogSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let usage = "expected `kmsg`, `file:PATH` or `cmd:COMMAND [ARGS...]`";
        if s == "kmsg" || s == "/dev/kmsg" {
            return Ok(KernelLogSpec::Kmsg(PathBuf::from("/dev/kmsg")));
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.trim().is_empty() {
                return Err(format!("invalid kernel log source {s:?}: no path; {usage}"));
            }
            return Ok(KernelLogSpec::File(PathBuf::from(path.trim())));
        }
        if let Some(command) = s.strip_prefix("cmd:") {
            let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                return Err(format!(
                    "invalid kernel log source {s:?}: no command; {usage}"
                ));
            }
            return Ok(KernelLogSpec::Command(argv));
        }
        if s.starts_with('/') {
            return Ok(KernelLogSpec::File(PathBuf::from(s)));
        }
        Err(format!("invalid kernel log source {s:?}: {usage}"))
    }
}

impl fmt::Display for KernelLogSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelLogSpec::Kmsg(path) if path == Path::new("/dev/kmsg") => f.write_str("kmsg"),
            KernelLogSpec::Kmsg(path) | KernelLogSpec::File(path) => {
                write!(f, "file:{}", path.display())
            }
            KernelLogSpec::Command(argv) => write!(f, "cmd:{}", argv.join(" ")),
        }
    }
}

/// Maps kernel log PCI addresses to GPU indices.
#[derive(Debug, Clone, Default)]
pub struct GpuAddresses {
    by_address: Vec<(PciAddress, u32)>,
}

impl GpuAddresses {
    pub fn from_inventory(gpus: &[GpuInfo]) -> GpuAddresses {
        let by_address = gpus
            .iter()
            .filter_map(|g| {
                let address = PciAddress::parse(&g.pci_bus_id);
                if address.is_none() {
                    warn!(gpu = g.index, bus_id = %g.pci_bus_id, "cannot parse the GPU's PCI bus id; its kernel log Xids cannot be attributed");
                }
                address.map(|a| (a, g.index))
            })
            .collect();
        GpuAddresses { by_address }
    }

    pub fn index_of(&self, address: PciAddress) -> Option<u32> {
        self.by_address
            .iter()
            .find(|(a, _)| *a == address)
            .map(|(_, i)| *i)
    }
}

/// Turns log lines into observations.
struct LineHandler {
    gpus: GpuAddresses,
    sink: XidSink,
    /// Addresses already warned about, so a flood from one is one warning.
    unknown: HashSet<PciAddress>,
}

impl LineHandler {
    /// False once nobody listens any more.
    fn handle(&mut self, line: &str) -> bool {
        let Some(parsed) = parse_line(line) else {
            return true;
        };
        let Some(gpu_index) = self.gpus.index_of(parsed.pci) else {
            if self.unknown.insert(parsed.pci) {
                warn!(pci = %parsed.pci, xid = parsed.xid, "kernel log Xid for a PCI device that is not an inventoried GPU; ignoring it");
            }
            return true;
        };
        self.sink.send(XidObservation {
            gpu_index,
            xid: parsed.xid,
            at_unix_ms: sup_proto::time::now_unix_ms(),
            source: XidSource::KernelLog,
            detail: parsed.detail,
        })
    }
}

/// Starts reading `spec` on a thread of its own, for as long as `sink` has
/// a listener. Failures (no permission on /dev/kmsg, a command that exits)
/// are logged and retried with backoff: the agent runs on without this
/// source rather than stopping.
pub fn spawn(spec: KernelLogSpec, gpus: &[GpuInfo], sink: XidSink) -> std::io::Result<()> {
    let mut handler = LineHandler {
        gpus: GpuAddresses::from_inventory(gpus),
        sink,
        unknown: HashSet::new(),
    };
    thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || {
            info!(source = %spec, "reading Xids from the kernel log");
            let mut retry = MIN_RETRY;
            while !handler.sink.is_closed() {
                let result = match &spec {
                    KernelLogSpec::Kmsg(path) => read_kmsg(path, &mut handler),
                    KernelLogSpec::File(path) => follow_file(path, &mut handler),
                    KernelLogSpec::Command(argv) => read_command(argv, &mut handler),
                };
                match result {
                    Ok(()) if handler.sink.is_closed() => return,
                    Ok(()) => warn!(source = %spec, "kernel log source ended; restarting it"),
                    Err(err) => warn!(source = %spec, error = %err, retry_in = %humantime::format_duration(retry), "cannot read the kernel log"),
                }
                thread::sleep(retry);
                retry = (retry * 2).min(MAX_RETRY);
            }
        })
        .map(|_| ())
}

/// `/dev/kmsg`: one record per read, `PRIO,SEQ,USEC,FLAGS;MESSAGE`, plus
/// continuation lines starting with a space (ignored: the marker never is
/// in them). Seeking to the end skips the records logged before now.
fn read_kmsg(path: &Path, handler: &mut LineHandler) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::End(0))?;
    let mut reader = BufReader::with_capacity(16 * 1024, file);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => thread::sleep(FOLLOW_POLL),
            Ok(_) => {
                if !handler.handle(&line) {
                    return Ok(());
                }
            }
            // Records were overwritten before we read them: carry on from
            // the oldest one still there.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                debug!("kernel log records were lost (ring buffer overrun)");
            }
            // Not UTF-8: skip the record.
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {}
            Err(err) => return Err(err),
        }
    }
}

/// Follows a file from its current end, across rotation (a new file at the
/// path) and truncation.
fn follow_file(path: &Path, handler: &mut LineHandler) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let position = file.seek(SeekFrom::End(0))?;
    // Lines written from here on are read: what an operator (and a test)
    // can wait for before expecting an Xid to be seen.
    info!(path = %path.display(), from_byte = position, "following the kernel log file");
    follow_open_file(path, file, position, handler)
}

/// Follows `file`, opened at `path` and read up to `position`.
fn follow_open_file(
    path: &Path,
    file: File,
    mut position: u64,
    handler: &mut LineHandler,
) -> std::io::Result<()> {
    let mut identity = file_identity(&file.metadata()?);
    let mut reader = BufReader::new(file);
    let mut pending = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut pending)?;
        position += n as u64;
        if n > 0 && pending.ends_with(b"\n") {
            let line = String::from_utf8_lossy(&pending);
            if !handler.handle(&line) {
                return Ok(());
            }
            pending.clear();
            continue;
        }
        if n > 0 {
            // A line still being written: wait for its end.
            continue;
        }
        if handler.sink.is_closed() {
            return Ok(());
        }
        thread::sleep(FOLLOW_POLL);
        match std::fs::metadata(path) {
            Ok(meta) if file_identity(&meta) != identity || meta.len() < position => {
                debug!(path = %path.display(), "kernel log file rotated or truncated; reopening");
                let file = File::open(path)?;
                identity = file_identity(&file.metadata()?);
                position = 0;
                pending.clear();
                reader = BufReader::new(file);
            }
            Ok(_) => {}
            // Between rotation steps the path may be missing for a moment.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
}

fn file_identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

fn read_command(argv: &[String], handler: &mut LineHandler) -> std::io::Result<()> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(());
    };
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    let result = loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => {
                if !handler.handle(&String::from_utf8_lossy(&buf)) {
                    break Ok(());
                }
            }
            Err(err) => break Err(err),
        }
    };
    // Ended (or we stop listening): make sure the command is gone.
    let _ = child.kill();
    let status = child.wait()?;
    debug!(%status, "kernel log command ended");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pci(domain: u32, bus: u8, device: u8) -> PciAddress {
        PciAddress {
            domain,
            bus,
            device,
        }
    }

    #[test]
    fn pci_addresses_from_nvml_and_the_kernel_compare_equal() {
        let nvml = PciAddress::parse("00000000:3B:00.0").expect("NVML form");
        let kernel = PciAddress::parse("0000:3b:00").expect("kernel form");
        assert_eq!(nvml, kernel);
        assert_eq!(nvml, pci(0, 0x3b, 0));
        assert_eq!(PciAddress::parse("3b:00.0"), Some(pci(0, 0x3b, 0)));
        assert_eq!(PciAddress::parse("00000001:8F:01.0"), Some(pci(1, 0x8f, 1)));
        assert_eq!(nvml.to_string(), "0000:3b:00");
        for bad in [
            "",
            "3b",
            "zz:00",
            "0000:3b:00.x",
            "0000:3b:000",
            "000000000:3b:00",
            "a:b:c:d",
        ] {
            assert_eq!(PciAddress::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn real_looking_lines_from_several_driver_versions() {
        let cases: &[(&str, PciAddress, u32, &str)] = &[
            // R535+, the GPU has fallen off the bus; via /dev/kmsg.
            (
                "3,1842,8512345678,-;NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
                pci(0, 0x3b, 0),
                79,
                "pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
            ),
            // dmesg with a timestamp and a syslog priority prefix.
            (
                "<3>[12345.678901] NVRM: Xid (PCI:0000:ca:00): 119, pid=2170, name=python, Timeout after 6s of waiting for RPC response from GPU1 GSP! Expected function 76 (GSP_RM_CONTROL) (0x20800a4c 0x4).",
                pci(0, 0xca, 0),
                119,
                "pid=2170, name=python, Timeout after 6s of waiting for RPC response from GPU1 GSP! Expected function 76 (GSP_RM_CONTROL) (0x20800a4c 0x4).",
            ),
            // journald (`journalctl -k`), R550 double-bit ECC.
            (
                "Nov 27 02:31:07 gpu-node-17 kernel: NVRM: Xid (PCI:0000:1b:00): 48, pid=31337, name=pt_main_thread, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.",
                pci(0, 0x1b, 0),
                48,
                "pid=31337, name=pt_main_thread, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, subpartition 0.",
            ),
            // Application fault with pid and name (R525).
            (
                "[ 8812.004711] NVRM: Xid (PCI:0000:65:00): 13, pid=8374, name=python3, Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address",
                pci(0, 0x65, 0),
                13,
                "pid=8374, name=python3, Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address",
            ),
            // MMU fault with a channel, no name= (R470).
            (
                "NVRM: Xid (PCI:0000:3b:00): 31, pid=1234, Ch 00000008, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f12_34560000. Fault is of type FAULT_PDE ACCESS_TYPE_READ",
                pci(0, 0x3b, 0),
                31,
                "pid=1234, Ch 00000008, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f12_34560000. Fault is of type FAULT_PDE ACCESS_TYPE_READ",
            ),
            // Old drivers (R3xx/R4xx): no "PCI:" and no pid.
            (
                "kernel: [ 42.123] NVRM: Xid (0000:01:00): 31, Ch 00000001, engmask 00000101, intr 10000000",
                pci(0, 0x01, 0),
                31,
                "Ch 00000001, engmask 00000101, intr 10000000",
            ),
            // Channel stopped, side effect.
            (
                "NVRM: Xid (PCI:0000:3b:00): 43, pid=12345, name=python, Ch 00000010",
                pci(0, 0x3b, 0),
                43,
                "pid=12345, name=python, Ch 00000010",
            ),
            // Row remapper, second PCI domain, upper-case hex.
            (
                "NVRM: Xid (PCI:0001:AB:00): 63, pid='<unknown>', name=<unknown>, Row Remapper: New row (0x00000000deadbeef) marked for remapping, reset gpu to activate.",
                pci(1, 0xab, 0),
                63,
                "pid='<unknown>', name=<unknown>, Row Remapper: New row (0x00000000deadbeef) marked for remapping, reset gpu to activate.",
            ),
            // A bare code at the end of the line.
            ("NVRM: Xid (PCI:0000:18:00): 154", pci(0, 0x18, 0), 154, ""),
            // Contained ECC (R535), with a trailing newline as read from a file.
            (
                "NVRM: Xid (PCI:0000:8f:00): 94, pid=977, name=torchrun, Contained: SM (0x1). RST: No, D-RST: No\n",
                pci(0, 0x8f, 0),
                94,
                "pid=977, name=torchrun, Contained: SM (0x1). RST: No, D-RST: No",
            ),
        ];
        for (line, address, xid, detail) in cases {
            let parsed = parse_line(line).unwrap_or_else(|| panic!("not parsed: {line}"));
            assert_eq!(parsed.pci, *address, "{line}");
            assert_eq!(parsed.xid, *xid, "{line}");
            assert_eq!(parsed.detail, *detail, "{line}");
        }
    }

    #[test]
    fn garbage_and_near_misses_are_ignored() {
        let long = "NVRM: Xid (PCI:0000:3b:00): ".to_owned() + &"9".repeat(40);
        let lines = [
            "",
            " ",
            "NVRM: GPU at PCI:0000:3b:00: GPU-8b9b6f7a-5d0e-11ee-8c99-0242ac120002",
            "NVRM: GPU Board Serial Number: 1652321012345",
            "NVRM: Xid",
            "NVRM: Xid (",
            "NVRM: Xid (PCI:0000:3b:00)",
            "NVRM: Xid (PCI:0000:3b:00): ",
            "NVRM: Xid (PCI:0000:3b:00): seventy-nine",
            "NVRM: Xid (PCI:0000:3b:00): 79abc, pid=1",
            "NVRM: Xid (PCI:zzzz:3b:00): 79, pid=1",
            "NVRM: Xid (PCI:0000:3b): 79",
            "NVRM: Xid PCI:0000:3b:00: 79",
            "NVRM: Xid (PCI:0000:3b:00) 79",
            &long,
            "usb 1-1: new high-speed USB device number 2 using xhci_hcd",
            "\u{0}\u{1}\u{fffd} NVRM: Xid (\u{fffd}): \u{fffd}",
            "NVRM: Xid (PCI:0000:3b:00): -5, pid=1",
        ];
        for line in lines {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
        // Arbitrary bytes as lossy text: never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed & 0xff) as u8
                })
                .collect();
            let text = format!("NVRM: Xid ({}", String::from_utf8_lossy(&bytes));
            let _ = parse_line(&text);
        }
    }

    #[test]
    fn long_details_are_cut_at_a_character_boundary() {
        let line = format!("NVRM: Xid (PCI:0000:3b:00): 13, {}", "é".repeat(300));
        let parsed = parse_line(&line).expect("parsed");
        assert!(parsed.detail.len() <= MAX_DETAIL);
        assert!(parsed.detail.chars().all(|c| c == 'é'));
    }

    #[test]
    fn sources_parse_and_print() {
        assert_eq!(
            "kmsg".parse::<KernelLogSpec>(),
            Ok(KernelLogSpec::Kmsg("/dev/kmsg".into()))
        );
        assert_eq!(
            "file:/var/log/kern.log".parse::<KernelLogSpec>(),
            Ok(KernelLogSpec::File("/var/log/kern.log".into()))
        );
        assert_eq!(
            "/var/log/kern.log".parse::<KernelLogSpec>(),
            Ok(KernelLogSpec::File("/var/log/kern.log".into()))
        );
        let cmd = "cmd:journalctl -k -f -n 0 -o cat"
            .parse::<KernelLogSpec>()
            .expect("command");
        assert_eq!(
            cmd,
            KernelLogSpec::Command(
                ["journalctl", "-k", "-f", "-n", "0", "-o", "cat"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(cmd.to_string(), "cmd:journalctl -k -f -n 0 -o cat");
        for bad in ["", "journal", "file:", "cmd:", "cmd:   "] {
            let err = bad.parse::<KernelLogSpec>().expect_err(bad);
            assert!(err.contains("kernel log source"), "{bad}: {err}");
        }
    }

    fn inventory() -> Vec<GpuInfo> {
        ["00000000:18:00.0", "00000000:3B:00.0", "not a bus id"]
            .iter()
            .zip(0u32..)
            .map(|(bus, index)| GpuInfo {
                index,
                pci_bus_id: (*bus).to_owned(),
                ..GpuInfo::default()
            })
            .collect()
    }

    #[test]
    fn addresses_map_to_gpu_indices() {
        let map = GpuAddresses::from_inventory(&inventory());
        assert_eq!(map.index_of(pci(0, 0x3b, 0)), Some(1));
        assert_eq!(map.index_of(pci(0, 0x18, 0)), Some(0));
        assert_eq!(map.index_of(pci(0, 0x99, 0)), None);
    }

    #[tokio::test]
    async fn a_followed_file_delivers_new_xids_only() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kern.log");
        std::fs::write(
            &path,
            "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, from before the agent started\n",
        )
        .expect("write");
        let (sink, mut rx) = XidSink::channel();
        // Opened and at its end before anything is appended, as the
        // follower's own thread does it; no waiting for that thread.
        let mut opened = File::open(&path).expect("open");
        let position = opened.seek(SeekFrom::End(0)).expect("seek");
        let mut handler = LineHandler {
            gpus: GpuAddresses::from_inventory(&inventory()),
            sink,
            unknown: HashSet::new(),
        };
        let followed = path.clone();
        thread::spawn(move || follow_open_file(&followed, opened, position, &mut handler));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        writeln!(file, "unrelated line").expect("write");
        writeln!(
            file,
            "NVRM: Xid (PCI:0000:99:00): 13, pid=2, not a GPU of ours"
        )
        .expect("write");
        write!(file, "NVRM: Xid (PCI:0000:18:00): 48, pid=3, ").expect("write");
        file.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(300)).await;
        writeln!(file, "written in two parts").expect("write");
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an Xid within 10s")
            .expect("sink open");
        assert_eq!(got.gpu_index, 0);
        assert_eq!(got.xid, 48);
        assert_eq!(got.source, XidSource::KernelLog);
        assert_eq!(got.detail, "pid=3, written in two parts");
        assert!(
            rx.try_recv().is_err(),
            "nothing else: the old line was skipped"
        );
    }

    /// The reader `kernel_log = "kmsg"` uses (the shipped config's), on a
    /// plain file of /dev/kmsg records: tests must not write to the host's
    /// /dev/kmsg, where every agent on the machine would read it.
    #[tokio::test]
    async fn the_kmsg_reader_delivers_xids_from_kmsg_records() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kmsg");
        std::fs::write(
            &path,
            "3,1840,8512000000,-;NVRM: Xid (PCI:0000:18:00): 79, pid=1, before the reader started\n",
        )
        .expect("write");
        let (sink, mut rx) = XidSink::channel();
        spawn(KernelLogSpec::Kmsg(path.clone()), &inventory(), sink).expect("spawn");
        let mut kmsg = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        // The reader starts at the end of the log whenever its thread gets
        // there: records are written until one is seen.
        let mut seq = 1841;
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                writeln!(kmsg, "6,{seq},8512345678,-;usb 1-1: not an Xid").expect("write");
                writeln!(
                    kmsg,
                    "3,{},8512345679,-;NVRM: Xid (PCI:0000:3b:00): 48, pid=7, name=python, DBE\n SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.0",
                    seq + 1
                )
                .expect("write");
                seq += 2;
                if let Ok(Some(xid)) =
                    tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
                {
                    break xid;
                }
            }
        })
        .await
        .expect("an Xid within 30s");
        assert_eq!((got.gpu_index, got.xid), (1, 48));
        assert_eq!(got.source, XidSource::KernelLog);
        assert_eq!(got.detail, "pid=7, name=python, DBE");
    }

    #[tokio::test]
    async fn a_command_source_delivers_its_xids() {
        let (sink, mut rx) = XidSink::channel();
        let spec: KernelLogSpec =
            "cmd:printf NVRM:\\x20Xid\\x20(PCI:0000:3b:00):\\x2074,\\x20pid=9\\n"
                .parse()
                .expect("spec");
        spawn(spec, &inventory(), sink).expect("spawn");
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an Xid within 10s")
            .expect("sink open");
        assert_eq!((got.gpu_index, got.xid), (1, 74));
        assert_eq!(got.detail, "pid=9");
    }
}

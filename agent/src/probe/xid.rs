//! Xid events as they happen, and the one queue every Xid source delivers
//! to. Both event readers — NVML's event thread (`nvml_events`) and the
//! kernel log reader (`kernel_log`) — produce the same [`XidObservation`]
//! (and so do drills), so the health monitor judges an Xid the same
//! whichever source saw it, and can merge two sources' copies of one Xid.
//!
//! Like the polled signals in `signals`, these are raw facts: which GPU,
//! which code, when, from where. The rule table in `crate::health` decides
//! what an Xid means.

/// Where an Xid was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XidSource {
    Nvml,
    KernelLog,
    Drill,
}

impl XidSource {
    /// The name on the wire (`XidEvent.source`).
    pub fn wire_name(self) -> &'static str {
        match self {
            XidSource::Nvml => "nvml",
            XidSource::KernelLog => "kernel_log",
            XidSource::Drill => "drill",
        }
    }
}

/// One Xid as a source saw it, already attributed to a GPU index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidObservation {
    pub gpu_index: u32,
    pub xid: u32,
    pub at_unix_ms: i64,
    pub source: XidSource,
    /// What the source said beyond the code (kernel log text, drill author).
    pub detail: String,
}

/// Where Xid sources deliver. Never blocks: a source on its own thread must
/// not stall on a slow monitor, so in an Xid storm the excess is dropped
/// (and counted in the log) rather than queued without bound.
#[derive(Debug, Clone)]
pub struct XidSink {
    tx: tokio::sync::mpsc::Sender<XidObservation>,
}

/// Xids waiting for the health monitor.
pub const XID_QUEUE: usize = 1024;

impl XidSink {
    pub fn channel() -> (XidSink, tokio::sync::mpsc::Receiver<XidObservation>) {
        let (tx, rx) = tokio::sync::mpsc::channel(XID_QUEUE);
        (XidSink { tx }, rx)
    }

    /// Delivers `xid`; false once nobody listens any more (the source should
    /// stop then).
    pub fn send(&self, xid: XidObservation) -> bool {
        match self.tx.try_send(xid) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(dropped)) => {
                tracing::warn!(
                    gpu = dropped.gpu_index,
                    xid = dropped.xid,
                    "Xid queue full (an Xid storm?); dropping an Xid event"
                );
                true
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

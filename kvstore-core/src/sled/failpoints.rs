//! Failpoints of the writer (the `fail` crate), in builds with the feature
//! `failpoints` only: the robustness tests crash the writer or fail its flush at
//! chosen points of a write, set at start with `FAILPOINTS`, e.g.
//! `FAILPOINTS='sled::after-flush=1%return'`:
//!
//! | failpoint | where | its `return` |
//! | --- | --- | --- |
//! | `sled::before-flush` | a group applied, before its flush | the process aborts |
//! | `sled::flush-error` | the same place | the flush fails with an I/O error |
//! | `sled::after-flush` | a group flushed, before anyone is answered | the process aborts |
//! | `sled::between-log-and-kv` | the group's change records written, `kv` not yet | the process aborts |

use std::sync::Once;

/// Reads `FAILPOINTS` once per process.
pub(super) fn setup() {
    static SETUP: Once = Once::new();
    SETUP.call_once(|| {
        // The scenario holds a global lock while it lives: for the whole process.
        std::mem::forget(fail::FailScenario::setup());
    });
}

/// Ends the process as a crash would: no flush, no unwinding, no answer.
pub(super) fn crash(point: &str) -> ! {
    log::error!("failpoint {point}: crashing");
    std::process::abort()
}

//! The condition a write can be made to depend on, shared by the store and the SDK.

/// What must be true of a key for a conditional put or delete to happen.
///
/// A write without a condition is `None` where an `Option<Condition>` is asked for.
///
/// ```
/// use kvstore_core::Condition;
/// assert!(Condition::ModRevision(7).holds(Some(7)));
/// assert!(!Condition::Absent.holds(Some(7)));
/// assert!(Condition::Absent.holds(None));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The key must not exist (create-only; HTTP `If-None-Match: *`).
    Absent,
    /// The key must exist (HTTP `If-Match: *`).
    Exists,
    /// The key must exist with this `mod_revision` (compare-and-swap; HTTP
    /// `If-Match: "N"`).
    ModRevision(u64),
}

impl Condition {
    /// Whether the condition holds for a key whose current `mod_revision` is
    /// `current` (`None`: the key does not exist).
    pub fn holds(self, current: Option<u64>) -> bool {
        match self {
            Condition::Absent => current.is_none(),
            Condition::Exists => current.is_some(),
            Condition::ModRevision(want) => current == Some(want),
        }
    }
}

//! The names of the response headers the API sets beside a value (also the ones
//! CORS lets a browser read, see `cors`).

/// The revision that created the key.
pub const CREATE_REVISION: &str = "x-kv-create-revision";
/// The key's `mod_revision` (also the `ETag`).
pub const MOD_REVISION: &str = "x-kv-mod-revision";
/// The key's version.
pub const VERSION: &str = "x-kv-version";
/// The store's current revision.
pub const STORE_REVISION: &str = "x-kv-revision";
/// The lease the key is attached to (absent for a permanent key).
pub const LEASE: &str = "x-kv-lease";
/// The revision a read was made at (beside `x-kv-revision`, the store's).
pub const READ_REVISION: &str = "x-kv-read-revision";
/// The store's current revision, on a list page read at a past revision.
pub const CURRENT_REVISION: &str = "x-kv-current-revision";

/// The headers a browser may read on a cross-origin answer (with `ETag`), see
/// `--cors-origin`.
pub const EXPOSED: &[&str] = &[CREATE_REVISION, MOD_REVISION, VERSION, STORE_REVISION];

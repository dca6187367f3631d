//! Our keys in etcd: each under the store's prefix, invisible to API users.

/// The first key after every key that starts with `prefix` (etcd's range end for a
/// prefix): the prefix with its last byte below 0xff raised by one; `\0` (every
/// key) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// How the store's keys are named in etcd.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: Vec<u8>,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.as_bytes().to_vec(),
        }
    }

    /// The etcd key of `key`.
    pub fn etcd(&self, key: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + key.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(key.as_bytes());
        out
    }

    /// The range `[start, end)` of etcd keys for our keys starting with `prefix`.
    pub fn range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.etcd(prefix);
        let end = prefix_end(&start);
        (start, end)
    }

    /// Our key for an etcd key, if it is one of ours (and UTF-8).
    pub fn ours(&self, etcd_key: &[u8]) -> Option<String> {
        let rest = etcd_key.strip_prefix(self.prefix.as_slice())?;
        String::from_utf8(rest.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_exactly_a_prefix() {
        assert_eq!(prefix_end(b"kv/a"), b"kv/b");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        let keys = Keys::new("kvstore/");
        assert_eq!(
            keys.range("app/"),
            (b"kvstore/app/".to_vec(), b"kvstore/app0".to_vec())
        );
        assert_eq!(keys.range(""), (b"kvstore/".to_vec(), b"kvstore0".to_vec()));
        assert_eq!(keys.ours(b"kvstore/app/x").as_deref(), Some("app/x"));
        assert_eq!(keys.ours(b"other/app/x"), None);
    }
}

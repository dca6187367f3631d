//! The servers a client may talk to, and which one it is using now.
//!
//! A client is given one or more base URLs of interchangeable servers (replicas
//! over one etcd cluster). Requests and watches go to the current one; on a
//! connection failure they move on to the next, and the one that answered becomes
//! the current one for everyone sharing the client.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Error;

/// The base URLs (no trailing `/`) and the index of the one in use.
#[derive(Debug)]
pub(crate) struct Endpoints {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Endpoints {
    /// Parses `urls`, each `http://host:port` or `https://host:port`; an entry may
    /// itself be a comma-separated list (as in `KV_URL=http://a:5000,http://b:5000`).
    pub(crate) fn parse<I, S>(urls: I) -> Result<Endpoints, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for entry in urls {
            for url in entry.as_ref().split(',') {
                let url = url.trim();
                let base = url.trim_end_matches('/');
                let https = base.starts_with("https://");
                if !(base.starts_with("http://") || https) || base.len() < 8 {
                    return Err(Error::InvalidUrl(url.to_string()));
                }
                if !parsed.iter().any(|known| known == base) {
                    parsed.push(base.to_string());
                }
            }
        }
        if parsed.is_empty() {
            return Err(Error::InvalidUrl(String::new()));
        }
        Ok(Endpoints {
            urls: parsed,
            current: AtomicUsize::new(0),
        })
    }

    /// Every base URL, in the order given.
    pub(crate) fn all(&self) -> &[String] {
        &self.urls
    }

    /// Whether any of them is `https://`.
    pub(crate) fn any_https(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("https://"))
    }

    /// The indices to try, the current one first, each once.
    pub(crate) fn order(&self) -> impl Iterator<Item = (usize, &str)> {
        let start = self.current.load(Ordering::Relaxed);
        let n = self.urls.len();
        (0..n).map(move |i| {
            let index = (start + i) % n;
            (index, self.urls[index].as_str())
        })
    }

    /// The base URL in use.
    pub(crate) fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// `index` answered: it is the one to use from now on.
    pub(crate) fn answered(&self, index: usize) {
        self.current.store(index, Ordering::Relaxed);
    }

    /// `index` could not be reached: the next one becomes current, unless someone
    /// already moved away from it.
    pub(crate) fn failed(&self, index: usize) {
        let next = (index + 1) % self.urls.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// How many there are.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }
}

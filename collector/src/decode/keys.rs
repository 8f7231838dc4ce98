//! The attribute keys the decoder reads, found once per attribute: by a
//! table lookup on three of the key's bytes and one compare, for every
//! reader (protobuf bytes, JSON, the generated messages), so the span
//! builder dispatches on an [`AttrKey`] instead of comparing strings.

use herdwatch_analyzer::model::same_bytes;

/// An attribute key the decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttrKey {
    HttpRoute,
    HttpRequestMethod,
    HttpResponseStatusCode,
    UrlPath,
    DbSystemName,
    DbOperationName,
    DbQueryText,
    DbNamespace,
    ServerAddress,
    CacheKey,
    CacheHit,
    HttpMethod,
    HttpStatusCode,
    HttpTarget,
    DbSystem,
    DbOperation,
    DbStatement,
    DbName,
    NetPeerName,
    CacheResult,
    CacheOutcome,
    HttpRequestResendCount,
    ServiceName,
    ServiceVersion,
    ServiceInstanceId,
}

/// A key, its name, and whether a string value of it is interned as it
/// is (not cut or only compared): those values the wire reader finds among
/// the ones its thread interned lately, by their bytes.
pub(crate) struct KeyInfo {
    pub name: &'static str,
    pub key: AttrKey,
    pub verbatim: bool,
}

const fn info(name: &'static str, key: AttrKey, verbatim: bool) -> KeyInfo {
    KeyInfo {
        name,
        key,
        verbatim,
    }
}

/// The span attribute keys.
pub(crate) const SPAN_KEYS: [KeyInfo; 22] = {
    use AttrKey::*;
    [
        info("http.route", HttpRoute, true),
        info("http.request.method", HttpRequestMethod, true),
        info("http.response.status_code", HttpResponseStatusCode, false),
        info("url.path", UrlPath, true),
        // System names are lowered, but most are lower case already.
        info("db.system.name", DbSystemName, true),
        info("db.operation.name", DbOperationName, true),
        info("db.query.text", DbQueryText, true),
        info("db.namespace", DbNamespace, true),
        info("server.address", ServerAddress, true),
        info("cache.key", CacheKey, true),
        info("cache.hit", CacheHit, false),
        info("http.method", HttpMethod, true),
        info("http.status_code", HttpStatusCode, false),
        info("http.target", HttpTarget, false),
        info("db.system", DbSystem, true),
        info("db.operation", DbOperation, true),
        info("db.statement", DbStatement, true),
        info("db.name", DbName, true),
        info("net.peer.name", NetPeerName, true),
        info("cache.result", CacheResult, false),
        info("cache.outcome", CacheOutcome, false),
        info("http.request.resend_count", HttpRequestResendCount, false),
    ]
};

/// The resource attribute keys.
pub(crate) const RESOURCE_KEYS: [KeyInfo; 3] = [
    info("service.name", AttrKey::ServiceName, true),
    info("service.version", AttrKey::ServiceVersion, true),
    info("service.instance.id", AttrKey::ServiceInstanceId, true),
];

const SLOTS: usize = 64;

/// Where a name of at least two bytes sits in [`TABLE`]: distinct for
/// every listed key (checked when the table is built, at compile time).
const fn slot(b: &[u8]) -> usize {
    (b.len() + b[b.len() - 2] as usize * 11 + b[1] as usize) % SLOTS
}

/// Slot → index in `SPAN_KEYS` then `RESOURCE_KEYS` (`u8::MAX`: none).
const TABLE: [u8; SLOTS] = {
    let mut t = [u8::MAX; SLOTS];
    let mut i = 0;
    while i < SPAN_KEYS.len() + RESOURCE_KEYS.len() {
        let k = nth(i);
        let s = slot(k.name.as_bytes());
        assert!(
            t[s] == u8::MAX,
            "two attribute keys share a slot: change `slot`"
        );
        t[s] = i as u8;
        i += 1;
    }
    t
};

const fn nth(i: usize) -> &'static KeyInfo {
    if i < SPAN_KEYS.len() {
        &SPAN_KEYS[i]
    } else {
        &RESOURCE_KEYS[i - SPAN_KEYS.len()]
    }
}

impl AttrKey {
    /// The listed key `name` is, if any.
    #[inline]
    pub(crate) fn find(name: &[u8]) -> Option<&'static KeyInfo> {
        if name.len() < 2 {
            return None;
        }
        let i = usize::from(TABLE[slot(name)]);
        let k = (i < SPAN_KEYS.len() + RESOURCE_KEYS.len()).then(|| nth(i))?;
        same_bytes(k.name.as_bytes(), name).then_some(k)
    }

    /// The key `name` is, if the decoder reads it.
    pub(crate) fn of(name: &str) -> Option<Self> {
        Self::find(name.as_bytes()).map(|k| k.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_is_found_and_nothing_else() {
        for k in SPAN_KEYS.iter().chain(&RESOURCE_KEYS) {
            assert_eq!(AttrKey::of(k.name), Some(k.key), "{}", k.name);
            // One byte changed anywhere is another key.
            for i in 0..k.name.len() {
                let mut b = k.name.as_bytes().to_vec();
                b[i] ^= 0x20;
                assert!(AttrKey::find(&b).is_none(), "{} changed at {i}", k.name);
            }
            // So is a prefix or a longer name.
            assert!(AttrKey::find(&k.name.as_bytes()[..k.name.len() - 1]).is_none());
            assert!(AttrKey::find(format!("{}x", k.name).as_bytes()).is_none());
        }
        for other in [
            "",
            "d",
            "db",
            "http.routes",
            "thread.id",
            "network.peer.port",
        ] {
            assert_eq!(AttrKey::of(other), None, "{other}");
        }
    }
}

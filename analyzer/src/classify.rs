//! Span roles (SPEC §3.1): requests, cache operations and database
//! operations, cache operation kinds, and key identity and key groups.

use crate::config::AnalysisConfig;
use crate::model::{SpanKind, SpanRow};

/// What a span is to the analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Request,
    Cache(CacheOp),
    Database,
    Other,
}

/// What a cache command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOp {
    Lookup,
    Fill,
    Lock,
    Invalidate,
    Flush,
    Other,
}

impl CacheOp {
    /// Classify a command word (`GET`, `setex`, `FLUSHALL`…); `query` is the
    /// whole statement, used to tell a `SET … NX PX 500` lock from a fill.
    pub fn from_command(command: &str, query: &str) -> Self {
        let c = command.to_ascii_uppercase();
        match c.as_str() {
            "GET" | "MGET" | "HGET" | "HMGET" | "HGETALL" | "GETEX" | "EXISTS" | "GETS"
            | "LOOKUP" | "FETCH" | "READ" | "JSON.GET" | "ZRANGE" | "LRANGE" | "SMEMBERS" => {
                Self::Lookup
            }
            "SET" => {
                let q = query.to_ascii_uppercase();
                let words: Vec<&str> = q.split_whitespace().collect();
                if words.contains(&"NX") && is_short_expiry(&words) {
                    Self::Lock
                } else {
                    Self::Fill
                }
            }
            "SETNX" => Self::Lock,
            "SETEX" | "PSETEX" | "HSET" | "HMSET" | "MSET" | "ADD" | "REPLACE" | "CAS"
            | "APPEND" | "PUT" | "WRITE" | "JSON.SET" | "ZADD" | "RPUSH" | "LPUSH" | "SADD"
            | "STORE" => Self::Fill,
            "DEL" | "UNLINK" | "DELETE" | "EXPIRE" | "INVALIDATE" | "HDEL" | "REMOVE" => {
                Self::Invalidate
            }
            "FLUSHALL" | "FLUSHDB" | "FLUSH_ALL" | "FLUSH" => Self::Flush,
            _ => Self::Other,
        }
    }
}

/// `SET k v NX PX 500` / `EX 2`: a lock expires within seconds.
fn is_short_expiry(words: &[&str]) -> bool {
    for w in words.windows(2) {
        let ms = match w[0] {
            "PX" => w[1].parse::<u64>().ok(),
            "EX" => w[1].parse::<u64>().ok().map(|s| s * 1000),
            _ => None,
        };
        if let Some(ms) = ms {
            return ms <= 30_000;
        }
    }
    // Sanitised (`SET ? ? NX PX ?`): NX alone is a lock.
    words.iter().any(|w| *w == "PX" || *w == "EX") || words.contains(&"NX")
}

/// The role of a span.
pub fn role(span: &SpanRow, config: &AnalysisConfig) -> Role {
    match span.kind {
        SpanKind::Server | SpanKind::Consumer => Role::Request,
        SpanKind::Producer => Role::Other,
        SpanKind::Client | SpanKind::Internal | SpanKind::Unspecified => {
            if span.db_system.is_empty() {
                Role::Other
            } else if config.is_cache_system(&span.db_system) {
                Role::Cache(CacheOp::from_command(command(span), &span.db_query))
            } else if is_connect(span) {
                // Acquiring a connection (`pg-pool.connect`, `pg.connect`):
                // time waiting on the pool, not work on the database.
                Role::Other
            } else {
                Role::Database
            }
        }
    }
}

/// A client span that only opens or acquires a connection.
fn is_connect(span: &SpanRow) -> bool {
    span.db_query.is_empty()
        && (span.db_operation.eq_ignore_ascii_case("connect")
            || span.name.eq_ignore_ascii_case("connect")
            || span.name.ends_with(".connect"))
}

/// The operation word: `db.operation.name`, else the first word of the
/// statement, else the first word of the span name.
pub fn command(span: &SpanRow) -> &str {
    if !span.db_operation.is_empty() {
        return span.db_operation.split_whitespace().next().unwrap_or("");
    }
    if let Some(w) = span.db_query.split_whitespace().next() {
        return w;
    }
    span.name.split_whitespace().next().unwrap_or("")
}

/// The key argument of an unsanitised command (`GET product:42`), if any.
pub fn command_key(span: &SpanRow) -> Option<&str> {
    let mut words = span.db_query.split_whitespace();
    words.next()?;
    let key = words.next()?;
    let sanitised = key == "?" || key.starts_with('$') || key == "%s" || key.starts_with(':');
    (!sanitised && !key.is_empty()).then_some(key)
}

/// Fold the variable parts of a key: numbers become `{n}`, UUID-like and
/// long hex segments `{id}` (`product:42` → `product:{n}`).
pub fn key_group(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut segment = String::new();
    let flush = |segment: &mut String, out: &mut String| {
        if !segment.is_empty() {
            out.push_str(fold_segment(segment));
            segment.clear();
        }
    };
    for c in key.chars() {
        if matches!(c, ':' | '/' | '.' | '|' | '#' | '?' | '=' | '&' | ',') {
            flush(&mut segment, &mut out);
            out.push(c);
        } else {
            segment.push(c);
        }
    }
    flush(&mut segment, &mut out);
    out
}

fn fold_segment(s: &str) -> &str {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return "{n}";
    }
    let hexish = s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let digits = s.bytes().filter(|b| b.is_ascii_digit()).count();
    if hexish && s.len() >= 16 && digits > 0 {
        return "{id}";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_classify() {
        assert_eq!(CacheOp::from_command("get", "GET ?"), CacheOp::Lookup);
        assert_eq!(CacheOp::from_command("SETEX", ""), CacheOp::Fill);
        assert_eq!(
            CacheOp::from_command("SET", "SET k v EX 300"),
            CacheOp::Fill
        );
        assert_eq!(
            CacheOp::from_command("SET", "SET lock:k 1 NX PX 500"),
            CacheOp::Lock
        );
        assert_eq!(
            CacheOp::from_command("SET", "SET ? ? NX PX ?"),
            CacheOp::Lock
        );
        assert_eq!(CacheOp::from_command("UNLINK", ""), CacheOp::Invalidate);
        assert_eq!(CacheOp::from_command("FLUSHALL", ""), CacheOp::Flush);
        assert_eq!(CacheOp::from_command("add", ""), CacheOp::Fill);
    }

    #[test]
    fn key_groups_fold_numbers_and_ids() {
        assert_eq!(key_group("product:42"), "product:{n}");
        assert_eq!(key_group("/product/42/reviews"), "/product/{n}/reviews");
        assert_eq!(
            key_group("user:3f2b8c1e-9a4d-4e5f-8b6a-1c2d3e4f5a6b:cart"),
            "user:{id}:cart"
        );
        assert_eq!(key_group("home:banner"), "home:banner");
    }
}

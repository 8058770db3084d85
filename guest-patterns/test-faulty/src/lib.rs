//! A deliberately faulty and hostile KeyValue pattern for the sandbox tests:
//! certain keys make it spin forever, allocate without bound, panic, recurse
//! without end, sleep, probe for ambient authority (files, sockets,
//! environment), hand the host giant arguments or return oversized results.
//! Every other key is served straight through the `kv` capability so
//! recovery can be observed.

wit_bindgen::generate!({
    path: "../../wit",
    world: "keyvalue",
});

use exports::prism::pattern::keyvalue_pattern::{Guest, ScanRequest, ScanResult};
use prism::pattern::kv::{self, Entry};
use prism::pattern::types::{CapabilityError, PatternError};

struct FaultyPattern;

/// Misbehaves as the key asks; returns for any other key. Keys whose fault
/// produces an answer (probes, host errors) return it as the value.
fn misbehave(key: &str) -> Option<Result<Vec<u8>, PatternError>> {
    match key {
        "fault:loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "fault:memory" => {
            // Grows memory without touching it: growth is what the limit
            // refuses, and a bomb that also filled its pages would compute
            // long enough to be sent to the background lane, where on a
            // saturated machine it may see the deadline before the limit.
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = Vec::<u8>::with_capacity(1 << 20);
                chunk.push(0xA5);
                hoard.push(std::hint::black_box(chunk));
            }
        }
        "fault:panic" => panic!("faulty pattern panicked on purpose"),
        "fault:recursion" => Some(Ok(recurse(std::hint::black_box(1)).to_le_bytes().to_vec())),
        "fault:deep-stack" => {
            let depth = u32::MAX - key.len() as u32;
            Some(Ok(deep(depth, key.len() as u64, 7).to_le_bytes().to_vec()))
        }
        "fault:sleep" => {
            // Blocks inside a host call (WASI poll), where epochs cannot reach.
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Some(Ok(b"woke".to_vec()))
        }
        "fault:ambient" => Some(Ok(probe_ambient_authority().into_bytes())),
        "fault:giant-batch" => {
            // A million keys in one import call: the host must refuse it unread.
            let keys: Vec<String> = (0..1_000_000).map(|i| format!("k{i}")).collect();
            Some(kv::get_many(&keys).map(|_| Vec::new()).map_err(capability))
        }
        "fault:giant-value" => {
            // Larger than the host's bound on one value.
            let value = vec![7u8; 40 << 20];
            Some(
                kv::set("giant", &value, None)
                    .map(|()| Vec::new())
                    .map_err(capability),
            )
        }
        "fault:big-lift" => {
            // The host must write 4 copies of the stored `big` value into this
            // instance's memory: past its limit, the call traps, not the host.
            let keys: Vec<String> = (0..4).map(|_| "big".to_string()).collect();
            Some(kv::get_many(&keys).map(|_| Vec::new()).map_err(capability))
        }
        "fault:huge-result" => Some(Ok(vec![1u8; 20 << 20])),
        _ => None,
    }
}

/// Recursion whose frames hold an array: Rust keeps those on its shadow
/// stack in linear memory, which runs out before the wasm stack does.
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let frame = std::hint::black_box([depth; 32]);
    recurse(depth + 1).wrapping_add(frame[(depth % 32) as usize])
}

/// Recursion on scalars only: every frame lives on the wasm stack itself,
/// which the host bounds (a real stack-overflow trap). The result feeds a
/// non-associative step, so the optimiser cannot turn it into a loop.
#[inline(never)]
fn deep(depth: u32, a: u64, b: u64) -> u64 {
    if depth == 0 {
        return a ^ b;
    }
    let x = deep(
        depth - 1,
        a.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(b),
        b.rotate_left(7) ^ a,
    );
    x.wrapping_add(a).rotate_left((b & 63) as u32)
}

/// Tries each kind of ambient authority a sandboxed pattern must not have
/// and reports what happened, one `name=outcome` per line.
fn probe_ambient_authority() -> String {
    let mut report = Vec::new();
    let outcome = |r: Result<String, std::io::Error>| match r {
        Ok(s) => format!("ALLOWED({s})"),
        Err(e) => format!("denied({:?})", e.kind()),
    };
    report.push(format!(
        "read_file={}",
        outcome(std::fs::read_to_string("/etc/passwd").map(|s| s.len().to_string()))
    ));
    report.push(format!(
        "read_dir={}",
        outcome(std::fs::read_dir("/").map(|d| d.count().to_string()))
    ));
    report.push(format!(
        "create_file={}",
        outcome(std::fs::write("prism-escape.txt", b"x").map(|()| "written".into()))
    ));
    report.push(format!(
        "cwd={}",
        outcome(std::env::current_dir().map(|p| p.display().to_string()))
    ));
    report.push(format!(
        "tcp_connect={}",
        outcome(std::net::TcpStream::connect("127.0.0.1:1").map(|_| "connected".into()))
    ));
    report.push(format!(
        "tcp_listen={}",
        outcome(std::net::TcpListener::bind("127.0.0.1:0").map(|_| "bound".into()))
    ));
    report.push(format!(
        "udp_bind={}",
        outcome(std::net::UdpSocket::bind("127.0.0.1:0").map(|_| "bound".into()))
    ));
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    report.push(format!("env_vars={}", vars.len()));
    report.push(format!("args={}", std::env::args().count()));
    let mut stdin = String::new();
    let read = std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin);
    report.push(format!("stdin_bytes={}", read.unwrap_or(0)));
    report.join("\n")
}

fn capability(err: CapabilityError) -> PatternError {
    match err {
        CapabilityError::Unavailable(m) => PatternError::Unavailable(m),
        CapabilityError::ResourceExhausted(m) => PatternError::ResourceExhausted(m),
        CapabilityError::InvalidArgument(m) => PatternError::InvalidArgument(m),
        CapabilityError::Internal(m) => PatternError::Internal(m),
    }
}

impl Guest for FaultyPattern {
    fn configure(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn get(key: String) -> Result<Vec<u8>, PatternError> {
        if let Some(answer) = misbehave(&key) {
            return answer;
        }
        kv::get(&key)
            .map_err(capability)?
            .ok_or_else(|| PatternError::NotFound(format!("key '{key}' not found")))
    }

    fn set(key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), PatternError> {
        if let Some(answer) = misbehave(&key) {
            return answer.map(drop);
        }
        kv::set(&key, &value, ttl_ms).map_err(capability)
    }

    fn delete(key: String) -> Result<bool, PatternError> {
        if let Some(answer) = misbehave(&key) {
            return answer.map(|_| true);
        }
        kv::delete(&key).map_err(capability)
    }

    fn exists(key: String) -> Result<bool, PatternError> {
        if let Some(answer) = misbehave(&key) {
            return answer.map(|_| true);
        }
        kv::exists(&key).map_err(capability)
    }

    fn scan(request: ScanRequest) -> Result<ScanResult, PatternError> {
        if request.prefix == "fault:many-keys" {
            // Far more keys than any page may hold.
            return Ok(ScanResult {
                keys: (0..2_000_000).map(|i| format!("k{i}")).collect(),
                cursor: None,
            });
        }
        let page = kv::scan(
            &request.prefix,
            request.cursor.as_deref(),
            request.limit.max(1),
        )
        .map_err(capability)?;
        Ok(ScanResult {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    fn get_many(keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, PatternError> {
        kv::get_many(&keys).map_err(capability)
    }

    fn set_many(entries: Vec<Entry>) -> Result<(), PatternError> {
        kv::set_many(&entries).map_err(capability)
    }

    fn delete_many(keys: Vec<String>) -> Result<u32, PatternError> {
        kv::delete_many(&keys).map_err(capability)
    }
}

export!(FaultyPattern);

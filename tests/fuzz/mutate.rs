//! Mutations of real inputs: byte mutations that know nothing of the format, and mutations that
//! know its structure (numbers that lie in an HDF5 file or an MTX header, JSON fields given absurd
//! values, store arrays with out-of-range indices or non-finite counts, safetensors headers and
//! tensors that lie).

/// splitmix64: small, seedable, and the same on every machine, so a case is replayed by its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Integers that break sizes and offsets: zero, one, boundaries of every width, huge.
const LIES: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    0xffff_ffff_ffff_ffff,
    1_000_000_000,
];

/// A mutation that knows nothing of the format: bit flips, interesting bytes, integers that
/// lie at any offset, truncation, a chunk repeated or removed.
pub fn bytes(rng: &mut Rng, b: &mut Vec<u8>) -> String {
    if b.is_empty() {
        b.push(rng.next() as u8);
        return "empty: one byte".into();
    }
    let n = b.len();
    match rng.below(6) {
        0 => {
            let k = 1 + rng.below(8);
            for _ in 0..k {
                let i = rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
            format!("{k} bit flips")
        }
        1 => {
            let i = rng.below(n);
            b[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 0x01]);
            format!("byte {i} set")
        }
        2 => {
            let w = *rng.pick(&[2usize, 4, 8]);
            let i = rng.below(n.saturating_sub(w).max(1));
            let v = rng.pick(&LIES).to_le_bytes();
            let end = (i + w).min(n);
            b[i..end].copy_from_slice(&v[..end - i]);
            format!("{w}-byte integer at {i}")
        }
        3 => {
            let k = rng.below(n);
            b.truncate(k);
            format!("truncated to {k}")
        }
        4 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(4096));
            let chunk = b[i..i + len].to_vec();
            let at = rng.below(n);
            b.splice(at..at, chunk);
            format!("{len} bytes from {i} repeated at {at}")
        }
        _ => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(4096));
            b.drain(i..i + len);
            format!("{len} bytes removed at {i}")
        }
    }
}

/// A structure-aware mutation of a binary file whose sizes are little-endian integers (HDF5):
/// one of the small integers it holds (a dimension, a length, a count, an offset) made to lie.
/// Dataspace dimensions, chunk sizes, string lengths and heap offsets are such numbers.
pub fn lying_number(rng: &mut Rng, b: &mut [u8]) -> String {
    let wide = rng.below(2) == 0;
    let w = if wide { 8 } else { 4 };
    let candidates: Vec<usize> = (0..b.len().saturating_sub(w))
        .filter(|&i| {
            let v = if wide {
                u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
            } else {
                u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as u64
            };
            (2..=1_000_000).contains(&v)
        })
        .collect();
    if candidates.is_empty() {
        return "no number to lie about".into();
    }
    let i = *rng.pick(&candidates);
    let old = if wide {
        u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
    } else {
        u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as u64
    };
    let new = match rng.below(4) {
        0 => old + 1,
        1 => old - 1,
        2 => old.saturating_mul(1 << rng.below(40)),
        _ => *rng.pick(&LIES),
    };
    if wide {
        b[i..i + 8].copy_from_slice(&new.to_le_bytes());
    } else {
        b[i..i + 4].copy_from_slice(&(new as u32).to_le_bytes());
    }
    format!("{w}-byte number {old} at {i} -> {new}")
}

/// A structure-aware mutation of a text format (an MTX header or body, a TSV, a CSV): one of its
/// numbers replaced by a lie, or a line dropped or repeated.
pub fn text(rng: &mut Rng, b: &mut Vec<u8>) -> String {
    let s = String::from_utf8_lossy(b).to_string();
    let mut runs = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    let lines: Vec<&str> = s.lines().collect();
    if runs.is_empty() || rng.below(4) == 0 {
        if lines.is_empty() {
            return bytes_fallback(rng, b);
        }
        let k = rng.below(lines.len());
        let mut out: Vec<&str> = lines.clone();
        let what = if rng.below(2) == 0 {
            out.remove(k);
            format!("line {k} dropped")
        } else {
            out.insert(k, lines[k]);
            format!("line {k} repeated")
        };
        *b = (out.join("\n") + "\n").into_bytes();
        return what;
    }
    let (a, z) = *rng.pick(&runs);
    let new = rng
        .pick(&[
            "0",
            "-1",
            "4294967296",
            "18446744073709551616",
            "1e30",
            "nan",
            "inf",
            "-0",
            "99999999999",
            "2.5",
            "",
        ])
        .to_string();
    let old = s[a..z].to_string();
    *b = format!("{}{}{}", &s[..a], new, &s[z..]).into_bytes();
    format!("number '{old}' at {a} -> '{new}'")
}

fn bytes_fallback(rng: &mut Rng, b: &mut Vec<u8>) -> String {
    bytes(rng, b)
}

/// A structure-aware mutation of a JSON file (a store header, model.json, split.json, a
/// safetensors header): one value replaced by an absurd one, or a field removed.
pub fn json(rng: &mut Rng, b: &mut Vec<u8>) -> String {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(b) else {
        return bytes(rng, b);
    };
    let mut paths = Vec::new();
    collect_paths(&v, String::new(), &mut paths);
    if paths.is_empty() {
        return bytes(rng, b);
    }
    let path = rng.pick(&paths).clone();
    let lie = rng
        .pick(&[
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(1_000_000_000_000u64),
            serde_json::json!(u64::MAX),
            serde_json::json!(1.5),
            serde_json::json!(1e300),
            serde_json::Value::Null,
            serde_json::json!("x"),
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!(true),
            serde_json::json!("F16"),
            serde_json::json!([0, 1_000_000_000_000u64]),
        ])
        .clone();
    let remove = rng.below(5) == 0;
    let target = v.pointer_mut(&path).expect("collected path");
    let what = if remove {
        *target = serde_json::Value::Null;
        remove_at(&mut v, &path);
        format!("{path} removed")
    } else {
        *target = lie.clone();
        format!("{path} = {lie}")
    };
    *b = serde_json::to_vec_pretty(&v).unwrap();
    what
}

fn collect_paths(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                collect_paths(x, p, out);
            }
        }
        serde_json::Value::Array(a) => {
            // Long arrays (gene names) would drown the rest: a few of their entries only.
            for (i, x) in a.iter().enumerate().take(3) {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                collect_paths(x, p, out);
            }
        }
        _ => {}
    }
}

fn remove_at(v: &mut serde_json::Value, path: &str) {
    let (parent, key) = path.rsplit_once('/').unwrap_or(("", path));
    let key = key.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(serde_json::Value::Object(m)) => {
            m.remove(&key);
        }
        Some(serde_json::Value::Array(a)) => {
            if let Ok(i) = key.parse::<usize>() {
                if i < a.len() {
                    a.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// The element type of a store array, by its file name.
#[derive(Clone, Copy, Debug)]
pub enum Elem {
    U32,
    U64,
    F32,
}

impl Elem {
    pub fn of(name: &str) -> Option<Elem> {
        if name.ends_with(".u32") {
            Some(Elem::U32)
        } else if name.ends_with(".u64") {
            Some(Elem::U64)
        } else if name.ends_with(".f32") {
            Some(Elem::F32)
        } else {
            None
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::U32 | Elem::F32 => 4,
            Elem::U64 => 8,
        }
    }
}

/// A structure-aware mutation of a store array: an element given a value that breaks the CSR
/// (an index out of range or repeated, a row pointer that goes back or past the end, a count that
/// is negative, non-finite, fractional or beyond f32's exact integers), or the array cut short.
pub fn array(rng: &mut Rng, b: &mut Vec<u8>, elem: Elem) -> String {
    let w = elem.size();
    let n = b.len() / w;
    if n == 0 {
        return bytes(rng, b);
    }
    if rng.below(8) == 0 {
        b.truncate((n - 1) * w);
        return "last element removed".into();
    }
    let k = rng.below(n);
    let at = k * w;
    let what = match elem {
        Elem::U32 => {
            let prev = if k > 0 {
                u32::from_le_bytes(b[at - 4..at].try_into().unwrap())
            } else {
                0
            };
            let v = *rng.pick(&[0, 39, 40, 41, u32::MAX, 1 << 31, prev, prev.wrapping_sub(1)]);
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            format!("element {k} = {v}")
        }
        Elem::U64 => {
            let cur = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
            let v = *rng.pick(&[0, cur + 1, cur.wrapping_sub(1), u64::MAX, 1 << 40, cur * 2]);
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            format!("element {k} = {v}")
        }
        Elem::F32 => {
            let v = *rng.pick(&[
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -1.0,
                0.5,
                1e30,
                16_777_217.0,
                0.0,
                -0.0,
                f32::MIN_POSITIVE / 2.0,
            ]);
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            format!("element {k} = {v}")
        }
    };
    what
}

/// A structure-aware mutation of a safetensors file: its JSON header (shapes, dtypes, offsets)
/// made to lie, or one weight made non-finite or huge.
pub fn safetensors(rng: &mut Rng, b: &mut Vec<u8>) -> String {
    if b.len() < 8 {
        return bytes(rng, b);
    }
    let hlen = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    if 8 + hlen > b.len() {
        return bytes(rng, b);
    }
    if rng.below(2) == 0 {
        let mut header = b[8..8 + hlen].to_vec();
        let what = json(rng, &mut header);
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&b[8 + hlen..]);
        *b = out;
        return format!("header: {what}");
    }
    let body = b.len() - 8 - hlen;
    if body < 4 {
        return bytes(rng, b);
    }
    let k = rng.below(body / 4);
    let at = 8 + hlen + 4 * k;
    let v = *rng.pick(&[f32::NAN, f32::INFINITY, -f32::INFINITY, 1e38]);
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    format!("weight {k} = {v}")
}

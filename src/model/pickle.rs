//! Python pickles, as far as model files need them: a reader (a small pickle machine that builds a
//! tree of [`Value`]s and never runs code) and a writer of protocol-2 pickles.
//!
//! Reading: every opcode of protocols 0 to 5 that a `torch.save` / scvi-tools model file can hold
//! is understood. Globals are not imported: calling one (`REDUCE`, `NEWOBJ`) yields an
//! [`Value::Object`] that records the callable and its arguments, and `BUILD` records the state, so
//! a caller interprets what it knows (a tensor, a numpy array, an `OrderedDict`) and carries the
//! rest (pandas frames in a model's history) as opaque objects. Containers are shared, as in Python:
//! a dict taken from the memo and filled later is the same dict. Malformed input is an error naming
//! the byte offset, never a panic; sizes read from the input are checked against what is left of it.
//!
//! Writing: [`Pickle`] is the tree to write, and [`dumps`] emits it with protocol-2 opcodes (the
//! protocol `torch.save` uses), readable by Python 2.7 and 3 and by every numpy and torch version.

use std::cell::RefCell;
use std::rc::Rc;

/// A value of the pickle machine.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (little-endian two's complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Set(Rc<RefCell<Vec<Value>>>),
    /// `module.name`, not imported.
    Global(Rc<(String, String)>),
    /// The result of calling `callable(*args)`, with the state a `BUILD` gave it.
    Object(Rc<RefCell<Object>>),
    /// A persistent id (`torch.save` stores a tensor's storage this way).
    PersId(Rc<Value>),
}

/// An object built by a call that was not run.
#[derive(Clone, Debug)]
pub struct Object {
    pub callable: Value,
    pub args: Vec<Value>,
    pub state: Option<Value>,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The elements of a list or a tuple.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::List(l) => Some(l.borrow().clone()),
            Value::Tuple(t) => Some(t.to_vec()),
            _ => None,
        }
    }
    /// The entries of a dict (an `OrderedDict` and a `defaultdict` read as dicts too).
    pub fn entries(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }
    /// `self[key]` for a dict with string keys.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d
                .borrow()
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }
    /// `(module, name)` of a global.
    pub fn global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(g) => Some((g.0.as_str(), g.1.as_str())),
            _ => None,
        }
    }
    /// The object a call built, if this is one.
    pub fn object(&self) -> Option<Object> {
        match self {
            Value::Object(o) => Some(o.borrow().clone()),
            _ => None,
        }
    }
    /// A short description of the value's type, for messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::List(_) => "list".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::Dict(_) => "dict".into(),
            Value::Set(_) => "set".into(),
            Value::Global(g) => format!("{}.{}", g.0, g.1),
            Value::Object(o) => match o.borrow().callable.global() {
                Some((m, n)) => format!("{m}.{n} object"),
                None => "object".into(),
            },
            Value::PersId(_) => "persistent id".into(),
        }
    }
}

fn is_builtin(module: &str) -> bool {
    module == "builtins" || module == "__builtin__"
}

/// A dict from a sequence of (key, value) pairs, if it is one.
fn dict_of_pairs(pairs: &[Value]) -> Option<Value> {
    let entries: Option<Vec<(Value, Value)>> = pairs
        .iter()
        .map(|p| match p.items() {
            Some(kv) if kv.len() == 2 => Some((kv[0].clone(), kv[1].clone())),
            _ => None,
        })
        .collect();
    Some(Value::Dict(Rc::new(RefCell::new(entries?))))
}

/// Calls the machine evaluates itself because they only build containers or bytes.
fn call(callable: &Value, args: Vec<Value>) -> Value {
    if let Some((m, n)) = callable.global() {
        match (m, n) {
            ("collections", "OrderedDict") | ("collections", "defaultdict") => {
                // OrderedDict(pairs) or OrderedDict() filled by SETITEMS; defaultdict(factory).
                let pairs = args.first().and_then(|a| a.items()).unwrap_or_default();
                return dict_of_pairs(&pairs).unwrap_or_else(|| Value::Dict(Default::default()));
            }
            (b, "dict") if is_builtin(b) => {
                let pairs = args.first().and_then(|a| a.items()).unwrap_or_default();
                if let Some(d) = dict_of_pairs(&pairs) {
                    return d;
                }
            }
            (b, "set" | "frozenset") if is_builtin(b) => {
                let items = args.first().and_then(|a| a.items()).unwrap_or_default();
                return Value::Set(Rc::new(RefCell::new(items)));
            }
            ("_codecs", "encode") => {
                // How protocol 2 stores bytes: encode(text, 'latin1').
                if let (Some(Value::Str(s)), enc) = (args.first(), args.get(1)) {
                    let latin1 = enc.and_then(|e| e.as_str()).unwrap_or("latin1");
                    if latin1 == "latin1" || latin1 == "latin-1" {
                        if let Some(b) = s.chars().map(|c| u8::try_from(c as u32).ok()).collect() {
                            return Value::Bytes(b);
                        }
                    }
                }
            }
            (b, "bytes" | "bytearray") if is_builtin(b) => match args.first() {
                None => return Value::Bytes(Vec::new()),
                Some(Value::Bytes(b)) => return Value::Bytes(b.clone()),
                Some(Value::List(l)) => {
                    let bytes: Option<Vec<u8>> = l
                        .borrow()
                        .iter()
                        .map(|v| v.as_int().and_then(|i| u8::try_from(i).ok()))
                        .collect();
                    if let Some(b) = bytes {
                        return Value::Bytes(b);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    Value::Object(Rc::new(RefCell::new(Object {
        callable: callable.clone(),
        args,
        state: None,
    })))
}

/// Why a pickle could not be read (a message with the byte offset).
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError(pub String);

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type PResult<T> = std::result::Result<T, PickleError>;

/// The deepest nesting of marks accepted (a bound on a hostile input's memory, not a limit any
/// real file approaches).
const MAX_MARKS: usize = 100_000;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, Value>,
}

impl<'a> Machine<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> PickleError {
        PickleError(format!("pickle byte {}: {msg}", self.pos))
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return Err(self.err(format!(
                "needs {n} more bytes, {} are left (truncated file?)",
                self.data.len() - self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> PResult<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len_u64(&mut self) -> PResult<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit")))
    }

    /// Bytes up to the next newline (text opcodes of protocol 0).
    fn line(&mut self) -> PResult<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn utf8(&self, b: &[u8]) -> PResult<String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn pop(&mut self) -> PResult<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("pop from an empty stack"));
        }
        Ok(self.stack.pop().unwrap())
    }

    fn top(&mut self) -> PResult<&mut Value> {
        self.stack
            .last_mut()
            .ok_or(PickleError("pickle: empty stack".into()))
    }

    /// The items above the last mark, removing the mark.
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no mark on the stack"))?;
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&mut self, k: u64) -> PResult<()> {
        let v = self
            .memo
            .get(&k)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {k} was never stored")))?;
        self.stack.push(v);
        Ok(())
    }

    fn memo_put(&mut self, k: u64) -> PResult<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.err("memo store from an empty stack"))?;
        self.memo.insert(k, v);
        Ok(())
    }

    fn set_items(&mut self, dict: &Value, kv: Vec<Value>) -> PResult<()> {
        if !kv.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for a dict"));
        }
        let Value::Dict(d) = dict else {
            return Err(self.err(format!("setting items on a {}", dict.kind())));
        };
        let mut d = d.borrow_mut();
        let mut it = kv.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            // Later keys win, as in Python (compare plain keys; other keys are appended).
            let same = |a: &Value| match (a, &k) {
                (Value::Str(x), Value::Str(y)) => x == y,
                (Value::Int(x), Value::Int(y)) => x == y,
                _ => false,
            };
            match d.iter_mut().find(|(a, _)| same(a)) {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(())
    }

    fn append(&mut self, list: &Value, items: Vec<Value>) -> PResult<()> {
        match list {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Set(l) => l.borrow_mut().extend(items),
            other => return Err(self.err(format!("appending to a {}", other.kind()))),
        }
        Ok(())
    }

    fn long(&self, b: &[u8]) -> Value {
        if b.is_empty() {
            return Value::Int(0);
        }
        if b.len() <= 8 {
            let neg = b[b.len() - 1] & 0x80 != 0;
            let mut buf = [if neg { 0xff } else { 0 }; 8];
            buf[..b.len()].copy_from_slice(b);
            return Value::Int(i64::from_le_bytes(buf));
        }
        Value::BigInt(b.to_vec())
    }

    fn run(&mut self) -> PResult<Value> {
        loop {
            let op = self.u8()?;
            match op {
                b'\x80' => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format!("pickle protocol {v} is newer than 5")));
                    }
                }
                b'\x95' => {
                    self.u64()?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.err("marks nested too deeply"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                b'\x88' => self.stack.push(Value::Bool(true)),
                b'\x89' => self.stack.push(Value::Bool(false)),
                b'I' => {
                    let l = self.line()?;
                    let s = std::str::from_utf8(l).map_err(|_| self.err("bad INT"))?;
                    self.stack.push(match s {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(s.parse().map_err(|_| self.err(format!("bad INT '{s}'")))?),
                    });
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'L' => {
                    let l = self.line()?;
                    let s = std::str::from_utf8(l).map_err(|_| self.err("bad LONG"))?;
                    let s = s.trim_end_matches('L');
                    self.stack.push(Value::Int(
                        s.parse()
                            .map_err(|_| self.err(format!("LONG '{s}' out of range")))?,
                    ));
                }
                b'\x8a' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let v = self.long(b);
                    self.stack.push(v);
                }
                b'\x8b' => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("negative LONG4 length"));
                    }
                    let b = self.take(n as usize)?;
                    let v = self.long(b);
                    self.stack.push(v);
                }
                b'F' => {
                    let l = self.line()?;
                    let s = std::str::from_utf8(l).map_err(|_| self.err("bad FLOAT"))?;
                    self.stack.push(Value::Float(
                        s.trim()
                            .parse()
                            .map_err(|_| self.err(format!("bad FLOAT '{s}'")))?,
                    ));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v));
                }
                b'S' => {
                    // Protocol 0 quoted string: keep the text between the quotes.
                    let l = self.line()?;
                    let t = l
                        .strip_prefix(b"'")
                        .and_then(|t| t.strip_suffix(b"'"))
                        .or_else(|| l.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")))
                        .ok_or_else(|| self.err("bad STRING"))?;
                    let s = self.utf8(t)?;
                    self.stack.push(Value::Str(s));
                }
                b'T' | b'U' => {
                    // Python 2 str: bytes, shown as text when they are UTF-8.
                    let n = if op == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let b = self.take(n)?;
                    self.stack.push(match std::str::from_utf8(b) {
                        Ok(s) => Value::Str(s.to_string()),
                        Err(_) => Value::Bytes(b.to_vec()),
                    });
                }
                b'V' => {
                    let l = self.line()?;
                    let s = self.utf8(l)?;
                    self.stack.push(Value::Str(s));
                }
                b'X' | b'\x8c' | b'\x8d' => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        b'\x8c' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.stack.push(Value::Str(s));
                }
                b'B' | b'C' | b'\x8e' | b'\x96' => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(b.to_vec()));
                }
                b']' => self
                    .stack
                    .push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?.clone();
                    self.append(&l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?.clone();
                    self.append(&l, items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b'\x85' | b'\x86' | b'\x87' => {
                    let n = (op - b'\x84') as usize;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(self.err("tuple from too few items"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b'}' => self
                    .stack
                    .push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let kv = self.pop_mark()?;
                    let d = Value::Dict(Rc::new(RefCell::new(Vec::new())));
                    self.set_items(&d, kv)?;
                    self.stack.push(d);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?.clone();
                    self.set_items(&d, vec![k, v])?;
                }
                b'u' => {
                    let kv = self.pop_mark()?;
                    let d = self.top()?.clone();
                    self.set_items(&d, kv)?;
                }
                b'\x8f' => self
                    .stack
                    .push(Value::Set(Rc::new(RefCell::new(Vec::new())))),
                b'\x90' => {
                    let items = self.pop_mark()?;
                    let s = self.top()?.clone();
                    self.append(&s, items)?;
                }
                b'\x91' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Set(Rc::new(RefCell::new(items))));
                }
                b'c' => {
                    let m = self.line()?;
                    let n = self.line()?;
                    let (m, n) = (self.utf8(m)?, self.utf8(n)?);
                    self.stack.push(Value::Global(Rc::new((m, n))));
                }
                b'\x93' => {
                    let n = self.pop()?;
                    let m = self.pop()?;
                    match (m, n) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.stack.push(Value::Global(Rc::new((m, n))))
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let args = match args {
                        Value::Tuple(t) => t.to_vec(),
                        other => {
                            return Err(self.err(format!("REDUCE with {} arguments", other.kind())))
                        }
                    };
                    self.stack.push(call(&f, args));
                }
                b'\x81' => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = args.items().ok_or_else(|| self.err("NEWOBJ arguments"))?;
                    self.stack.push(call(&cls, args));
                }
                b'\x92' => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = args
                        .items()
                        .ok_or_else(|| self.err("NEWOBJ_EX arguments"))?;
                    self.stack.push(call(&cls, args));
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.err("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    self.stack.push(call(&cls, items));
                }
                b'i' => {
                    let m = self.line()?;
                    let n = self.line()?;
                    let g = Value::Global(Rc::new((self.utf8(m)?, self.utf8(n)?)));
                    let items = self.pop_mark()?;
                    self.stack.push(call(&g, items));
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?.clone();
                    match obj {
                        Value::Object(o) => o.borrow_mut().state = Some(state),
                        Value::Dict(_) => {
                            // A dict subclass's __dict__ (e.g. defaultdict's factory): ignore.
                        }
                        other => {
                            return Err(self.err(format!("BUILD on a {}", other.kind())));
                        }
                    }
                }
                b'P' => {
                    let l = self.line()?;
                    let s = self.utf8(l)?;
                    self.stack.push(Value::PersId(Rc::new(Value::Str(s))));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::PersId(Rc::new(pid)));
                }
                b'g' => {
                    let l = self.line()?;
                    let k = std::str::from_utf8(l)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| self.err("bad GET"))?;
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?;
                }
                b'p' => {
                    let l = self.line()?;
                    let k = std::str::from_utf8(l)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| self.err("bad PUT"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                b'\x94' => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'\x97' => return Err(self.err("out-of-band buffers are not supported")),
                b'\x98' => {} // READONLY_BUFFER
                other => return Err(self.err(format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }
}

/// Read a pickle into a [`Value`] tree (no code is run).
pub fn loads(data: &[u8]) -> PResult<Value> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: std::collections::HashMap::new(),
    };
    m.run()
}

// ------------------------------------------------------------------------------------------------
// Writing.

/// A value to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Pickle {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Bytes, written as protocol 2 does: `_codecs.encode(text, 'latin1')`.
    Bytes(Vec<u8>),
    List(Vec<Pickle>),
    Tuple(Vec<Pickle>),
    /// Keys in order.
    Dict(Vec<(Pickle, Pickle)>),
    Global(String, String),
    /// `callable(*args)`.
    Reduce(Box<Pickle>, Vec<Pickle>),
    /// `obj.__setstate__(state)` (BUILD).
    Build(Box<Pickle>, Box<Pickle>),
    /// A persistent id (resolved by the loader, e.g. torch's storages).
    PersId(Box<Pickle>),
}

impl Pickle {
    pub fn str(s: impl Into<String>) -> Pickle {
        Pickle::Str(s.into())
    }
    pub fn global(m: &str, n: &str) -> Pickle {
        Pickle::Global(m.into(), n.into())
    }
    pub fn call(f: Pickle, args: Vec<Pickle>) -> Pickle {
        Pickle::Reduce(Box::new(f), args)
    }
    /// A dict with string keys.
    pub fn dict<K: Into<String>>(entries: impl IntoIterator<Item = (K, Pickle)>) -> Pickle {
        Pickle::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (Pickle::Str(k.into()), v))
                .collect(),
        )
    }
}

fn emit(out: &mut Vec<u8>, v: &Pickle) {
    match v {
        Pickle::None => out.push(b'N'),
        Pickle::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        Pickle::Int(i) => {
            if (0..256).contains(i) {
                out.push(b'K');
                out.push(*i as u8);
            } else if (0..65536).contains(i) {
                out.push(b'M');
                out.extend_from_slice(&(*i as u16).to_le_bytes());
            } else if i32::try_from(*i).is_ok() {
                out.push(b'J');
                out.extend_from_slice(&(*i as i32).to_le_bytes());
            } else {
                out.push(0x8a);
                out.push(8);
                out.extend_from_slice(&i.to_le_bytes());
            }
        }
        Pickle::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Pickle::Str(s) => {
            out.push(b'X');
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Pickle::Bytes(b) => {
            let text: String = b.iter().map(|&c| c as char).collect();
            emit(
                out,
                &Pickle::call(
                    Pickle::global("_codecs", "encode"),
                    vec![Pickle::Str(text), Pickle::str("latin1")],
                ),
            );
        }
        Pickle::List(items) => {
            out.push(b']');
            if !items.is_empty() {
                out.push(b'(');
                items.iter().for_each(|x| emit(out, x));
                out.push(b'e');
            }
        }
        Pickle::Tuple(items) => {
            if items.is_empty() {
                out.push(b')');
            } else {
                out.push(b'(');
                items.iter().for_each(|x| emit(out, x));
                out.push(b't');
            }
        }
        Pickle::Dict(entries) => {
            out.push(b'}');
            if !entries.is_empty() {
                out.push(b'(');
                for (k, x) in entries {
                    emit(out, k);
                    emit(out, x);
                }
                out.push(b'u');
            }
        }
        Pickle::Global(m, n) => {
            out.push(b'c');
            out.extend_from_slice(m.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(n.as_bytes());
            out.push(b'\n');
        }
        Pickle::Reduce(f, args) => {
            emit(out, f);
            emit(out, &Pickle::Tuple(args.clone()));
            out.push(b'R');
        }
        Pickle::Build(obj, state) => {
            emit(out, obj);
            emit(out, state);
            out.push(b'b');
        }
        Pickle::PersId(id) => {
            emit(out, id);
            out.push(b'Q');
        }
    }
}

/// Write `v` as a protocol-2 pickle.
pub fn dumps(v: &Pickle) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    emit(&mut out, v);
    out.push(b'.');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_values_read_back() {
        let v = Pickle::dict([
            ("a", Pickle::Int(-7)),
            ("big", Pickle::Int(1 << 40)),
            ("f", Pickle::Float(0.25)),
            ("s", Pickle::str("ünï")),
            ("l", Pickle::List(vec![Pickle::Bool(true), Pickle::None])),
            (
                "t",
                Pickle::Tuple(vec![Pickle::Int(300), Pickle::Int(70000)]),
            ),
            ("b", Pickle::Bytes(vec![0, 200, 255])),
        ]);
        let r = loads(&dumps(&v)).unwrap();
        assert_eq!(r.get("a").unwrap().as_int(), Some(-7));
        assert_eq!(r.get("big").unwrap().as_int(), Some(1 << 40));
        assert_eq!(r.get("f").unwrap().as_float(), Some(0.25));
        assert_eq!(r.get("s").unwrap().as_str(), Some("ünï"));
        let l = r.get("l").unwrap().items().unwrap();
        assert_eq!(l[0].as_bool(), Some(true));
        assert!(matches!(l[1], Value::None));
        let t = r.get("t").unwrap().items().unwrap();
        assert_eq!((t[0].as_int(), t[1].as_int()), (Some(300), Some(70000)));
        assert!(matches!(r.get("b").unwrap(), Value::Bytes(b) if b == [0, 200, 255]));
    }

    #[test]
    fn shared_containers_stay_shared() {
        // d = {}; x = [d, d]; d['k'] = 1 (memo PUT before the dict is filled, GET after).
        let p = b"\x80\x02]q\x00(}q\x01h\x01eh\x01X\x01\x00\x00\x00kK\x01s0.";
        let v = loads(p).unwrap();
        let items = v.items().unwrap();
        assert_eq!(items[1].get("k").unwrap().as_int(), Some(1));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02h\x05.",
            b"\x80\x02e.",
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x80\x02t.",
            b"\x80\x09N.",
            b"\xff",
        ] {
            assert!(loads(bad).is_err(), "{bad:?}");
        }
        // Every truncation of a valid pickle fails cleanly.
        let ok = dumps(&Pickle::dict([("x", Pickle::List(vec![Pickle::Int(1)]))]));
        for n in 0..ok.len() {
            assert!(loads(&ok[..n]).is_err());
        }
    }
}

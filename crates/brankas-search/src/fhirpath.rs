//! The FHIRPath subset used by the official R4 search-parameter expressions:
//! compiled once into a small AST, evaluated by streaming over a resource.
//!
//! Supported: member paths (with choice types: `Observation.value` finds
//! `valueQuantity`), `|` union, `[n]`, `first()`, `last()`, `as T` / `as(T)` /
//! `ofType(T)`, `is T` / `is(T)`, `where(...)` with equality on simple fields,
//! `where(resolve() is T)` (answered from the reference text, since nothing is
//! resolved here), `exists()`, `empty()`, `not()`, `and`, `or`, `=`, `!=` and
//! string/number/boolean literals. Anything else is a [`CompileError`], which
//! makes the search parameter unsupported rather than wrong.
//!
//! Evaluation calls a closure per result item instead of building
//! collections: matching thousands of resources then allocates nothing, and a
//! match can stop at the first hit ([`ControlFlow::Break`]).

use std::ops::ControlFlow;

use serde_json::Value;

/// Result of a streaming callback: `Break` stops the whole evaluation.
pub(crate) type Flow = ControlFlow<()>;

const CONTINUE: Flow = ControlFlow::Continue(());

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

/// One item of a FHIRPath collection: a JSON node plus, when known, its FHIR
/// type (from a choice element's suffix: `valueQuantity` → `Quantity`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item<'a> {
    pub value: &'a Value,
    pub ty: Option<&'a str>,
}

impl<'a> Item<'a> {
    pub(crate) fn root(value: &'a Value) -> Item<'a> {
        Item { value, ty: None }
    }
}

/// Why an expression cannot be compiled. Only ever describes the expression
/// (official definition text), never query values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompileError(pub String);

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// Always the empty collection (a union branch for another resource type).
    Empty,
    /// The context item (`$this`).
    This,
    /// A leading type name such as `Observation` in `Observation.code`.
    /// Replaced by [`Node::This`] or [`Node::Empty`] by [`Node::specialize`].
    TypeRoot(String),
    Member(Box<Node>, String),
    Index(Box<Node>, usize),
    First(Box<Node>),
    Last(Box<Node>),
    Union(Vec<Node>),
    As(Box<Node>, String),
    Is(Box<Node>, String),
    /// `resolve()`: only valid as `X.where(resolve() is T)`, which the parser
    /// rewrites into [`Node::RefIs`].
    Resolve(Box<Node>),
    /// References (or canonical strings) in `X` whose target type is `T`.
    RefIs(Box<Node>, String),
    Where(Box<Node>, Box<Node>),
    Exists(Box<Node>),
    EmptyFn(Box<Node>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    /// `left = lit` / `left != lit` (`negate`).
    Eq {
        left: Box<Node>,
        lit: Value,
        negate: bool,
    },
    Lit(Value),
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    This,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Comma,
    Pipe,
    Eq,
    Ne,
}

fn lex(src: &str) -> Result<Vec<Tok>, CompileError> {
    let mut out = Vec::new();
    let mut it = src.char_indices().peekable();
    while let Some(&(i, c)) = it.peek() {
        match c {
            c if c.is_whitespace() => {
                it.next();
            }
            '(' | ')' | '[' | ']' | '.' | ',' | '|' | '=' => {
                it.next();
                out.push(match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    '.' => Tok::Dot,
                    ',' => Tok::Comma,
                    '|' => Tok::Pipe,
                    _ => Tok::Eq,
                });
            }
            '!' => {
                it.next();
                if it.next().map(|x| x.1) != Some('=') {
                    return Err(CompileError(format!("unexpected `!` at {i}")));
                }
                out.push(Tok::Ne);
            }
            '\'' => {
                it.next();
                let mut s = String::new();
                loop {
                    match it.next() {
                        None => return Err(CompileError("unterminated string".into())),
                        Some((_, '\'')) => break,
                        Some((_, '\\')) => match it.next() {
                            Some((_, e)) => s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => other,
                            }),
                            None => return Err(CompileError("unterminated string".into())),
                        },
                        Some((_, ch)) => s.push(ch),
                    }
                }
                out.push(Tok::Str(s));
            }
            '`' => {
                it.next();
                let mut s = String::new();
                loop {
                    match it.next() {
                        None => return Err(CompileError("unterminated identifier".into())),
                        Some((_, '`')) => break,
                        Some((_, ch)) => s.push(ch),
                    }
                }
                out.push(Tok::Ident(s));
            }
            '$' => {
                let mut s = String::new();
                it.next();
                while let Some(&(_, ch)) = it.peek() {
                    if ch.is_ascii_alphanumeric() {
                        s.push(ch);
                        it.next();
                    } else {
                        break;
                    }
                }
                if s != "this" {
                    return Err(CompileError(format!("unsupported variable ${s}")));
                }
                out.push(Tok::This);
            }
            c if c.is_ascii_digit() => {
                let mut s = String::new();
                while let Some(&(_, ch)) = it.peek() {
                    if ch.is_ascii_digit() || ch == '.' {
                        s.push(ch);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Num(s));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&(_, ch)) = it.peek() {
                    if ch.is_ascii_alphanumeric() || ch == '_' {
                        s.push(ch);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Ident(s));
            }
            other => {
                return Err(CompileError(format!("unsupported character `{other}` at {i}")));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- parser

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

/// Nesting limit: official expressions are shallow; this keeps a hostile or
/// broken definition from overflowing the stack.
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn peek_ident(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == kw)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, t: &Tok) -> Result<(), CompileError> {
        match self.next() {
            Some(ref x) if x == t => Ok(()),
            other => Err(CompileError(format!("expected {t:?}, found {other:?}"))),
        }
    }

    fn expr(&mut self) -> Result<Node, CompileError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CompileError("expression nested too deeply".into()));
        }
        let r = self.or();
        self.depth -= 1;
        r
    }

    fn or(&mut self) -> Result<Node, CompileError> {
        let mut left = self.and()?;
        while self.peek_ident("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        if self.peek_ident("xor") || self.peek_ident("implies") {
            return Err(CompileError("unsupported operator".into()));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, CompileError> {
        let mut left = self.equality()?;
        while self.peek_ident("and") {
            self.pos += 1;
            let right = self.equality()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Node, CompileError> {
        let left = self.union()?;
        let negate = match self.peek() {
            Some(Tok::Eq) => false,
            Some(Tok::Ne) => true,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.union()?;
        // Only `path = literal` (either way round) occurs in the definitions.
        match (left, right) {
            (Node::Lit(lit), other) | (other, Node::Lit(lit)) => Ok(Node::Eq { left: Box::new(other), lit, negate }),
            _ => Err(CompileError("equality between two paths".into())),
        }
    }

    fn union(&mut self) -> Result<Node, CompileError> {
        let first = self.type_expr()?;
        if self.peek() != Some(&Tok::Pipe) {
            return Ok(first);
        }
        let mut all = vec![first];
        while self.peek() == Some(&Tok::Pipe) {
            self.pos += 1;
            all.push(self.type_expr()?);
        }
        Ok(Node::Union(all))
    }

    fn type_expr(&mut self) -> Result<Node, CompileError> {
        let mut left = self.postfix()?;
        loop {
            if self.peek_ident("as") {
                self.pos += 1;
                left = Node::As(Box::new(left), self.type_name()?);
            } else if self.peek_ident("is") {
                self.pos += 1;
                left = Node::Is(Box::new(left), self.type_name()?);
            } else {
                return Ok(left);
            }
        }
    }

    /// `Quantity`, `FHIR.Quantity`, `System.String`: the last part names it.
    fn type_name(&mut self) -> Result<String, CompileError> {
        let mut name = match self.next() {
            Some(Tok::Ident(s)) => s,
            other => return Err(CompileError(format!("expected type name, found {other:?}"))),
        };
        while self.peek() == Some(&Tok::Dot) && matches!(self.toks.get(self.pos + 1), Some(Tok::Ident(_))) && (name == "FHIR" || name == "System") {
            self.pos += 1;
            if let Some(Tok::Ident(s)) = self.next() {
                name = s;
            }
        }
        Ok(name)
    }

    fn postfix(&mut self) -> Result<Node, CompileError> {
        let mut node = self.primary()?;
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    let name = match self.next() {
                        Some(Tok::Ident(s)) => s,
                        other => {
                            return Err(CompileError(format!("expected name, found {other:?}")));
                        }
                    };
                    node = if self.peek() == Some(&Tok::LParen) { self.function(node, &name)? } else { Node::Member(Box::new(node), name) };
                }
                Some(Tok::LBracket) => {
                    self.pos += 1;
                    let n = match self.next() {
                        Some(Tok::Num(s)) => s.parse::<usize>().map_err(|_| CompileError("bad index".into()))?,
                        other => return Err(CompileError(format!("bad index {other:?}"))),
                    };
                    self.expect(&Tok::RBracket)?;
                    node = Node::Index(Box::new(node), n);
                }
                _ => return Ok(node),
            }
        }
    }

    fn primary(&mut self) -> Result<Node, CompileError> {
        match self.next() {
            Some(Tok::LParen) => {
                let e = self.expr()?;
                self.expect(&Tok::RParen)?;
                Ok(e)
            }
            Some(Tok::Str(s)) => Ok(Node::Lit(Value::String(s))),
            Some(Tok::Num(s)) => {
                let n: serde_json::Number = s.parse().map_err(|_| CompileError("bad number literal".into()))?;
                Ok(Node::Lit(Value::Number(n)))
            }
            Some(Tok::This) => Ok(Node::This),
            Some(Tok::Ident(s)) => match s.as_str() {
                "true" => Ok(Node::Lit(Value::Bool(true))),
                "false" => Ok(Node::Lit(Value::Bool(false))),
                _ if self.peek() == Some(&Tok::LParen) => self.function(Node::This, &s),
                // FHIR element names are camelCase; a capitalised identifier
                // at the start of a path is a type filter on the context.
                _ if s.starts_with(|c: char| c.is_ascii_uppercase()) => Ok(Node::TypeRoot(s)),
                _ => Ok(Node::Member(Box::new(Node::This), s)),
            },
            other => Err(CompileError(format!("unexpected {other:?}"))),
        }
    }

    fn no_args(&mut self) -> Result<(), CompileError> {
        self.expect(&Tok::LParen)?;
        self.expect(&Tok::RParen)
    }

    fn function(&mut self, base: Node, name: &str) -> Result<Node, CompileError> {
        let b = Box::new(base);
        Ok(match name {
            "where" => {
                self.expect(&Tok::LParen)?;
                let crit = self.expr()?;
                self.expect(&Tok::RParen)?;
                match crit {
                    Node::Is(inner, ty) if *inner == Node::Resolve(Box::new(Node::This)) => Node::RefIs(b, ty),
                    crit => Node::Where(b, Box::new(crit)),
                }
            }
            "exists" => {
                self.expect(&Tok::LParen)?;
                if self.peek() == Some(&Tok::RParen) {
                    self.pos += 1;
                    Node::Exists(b)
                } else {
                    let crit = self.expr()?;
                    self.expect(&Tok::RParen)?;
                    Node::Exists(Box::new(Node::Where(b, Box::new(crit))))
                }
            }
            "empty" => {
                self.no_args()?;
                Node::EmptyFn(b)
            }
            "not" => {
                self.no_args()?;
                Node::Not(b)
            }
            "first" => {
                self.no_args()?;
                Node::First(b)
            }
            "last" => {
                self.no_args()?;
                Node::Last(b)
            }
            "resolve" => {
                self.no_args()?;
                Node::Resolve(b)
            }
            "as" | "ofType" | "is" => {
                self.expect(&Tok::LParen)?;
                let ty = self.type_name()?;
                self.expect(&Tok::RParen)?;
                if name == "is" { Node::Is(b, ty) } else { Node::As(b, ty) }
            }
            other => return Err(CompileError(format!("unsupported function {other}()"))),
        })
    }
}

/// Compiles an expression (not yet specialised to a resource type).
pub(crate) fn compile(src: &str) -> Result<Node, CompileError> {
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0, depth: 0 };
    let node = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(CompileError(format!("trailing input at token {}", p.pos)));
    }
    if node.contains_resolve() {
        return Err(CompileError("resolve() outside where(resolve() is T)".into()));
    }
    Ok(node)
}

// ---------------------------------------------------------------- types

/// FHIR data type names that can follow a choice element's name in JSON
/// (`value[x]` → `valueQuantity`). A fixed list rather than "any capitalised
/// suffix", so `status` never picks up `statusReason`.
const CHOICE_TYPES: &[&str] = &[
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "Date",
    "DateTime",
    "Decimal",
    "Id",
    "Instant",
    "Integer",
    "Markdown",
    "Oid",
    "PositiveInt",
    "String",
    "Time",
    "UnsignedInt",
    "Uri",
    "Url",
    "Uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
];

fn choice_suffix<'k>(key: &'k str, name: &str) -> Option<&'k str> {
    let rest = key.strip_prefix(name)?;
    (rest.starts_with(|c: char| c.is_ascii_uppercase()) && CHOICE_TYPES.contains(&rest)).then_some(rest)
}

/// Is `actual` (a choice suffix like `DateTime`) the type `wanted` (as written
/// in FHIRPath: `dateTime`, `Quantity`) or one of its specialisations?
fn type_matches(actual: &str, wanted: &str) -> bool {
    if eq_first_caseless(actual, wanted) {
        return true;
    }
    let canon = |s: &str| -> &'static str {
        // Specialisations per the FHIR type hierarchy.
        match () {
            _ if ["Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"].iter().any(|t| eq_first_caseless(s, t)) => "Quantity",
            _ if ["Url", "Canonical", "Oid", "Uuid"].iter().any(|t| eq_first_caseless(s, t)) => "Uri",
            _ if ["Code", "Id", "Markdown"].iter().any(|t| eq_first_caseless(s, t)) => "String",
            _ if ["PositiveInt", "UnsignedInt"].iter().any(|t| eq_first_caseless(s, t)) => "Integer",
            _ => "",
        }
    };
    let c = canon(actual);
    !c.is_empty() && eq_first_caseless(c, wanted)
}

/// `DateTime` vs `dateTime`: equal except for the case of the first letter.
fn eq_first_caseless(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && !a.is_empty() && a[0].eq_ignore_ascii_case(&b[0]) && a[1..] == b[1..]
}

/// `as T` on an item whose type we do not know (not from a choice element):
/// accept it when its JSON shape is compatible, since the official
/// expressions only cast choice elements and being strict would lose data.
fn shape_matches(v: &Value, wanted: &str) -> bool {
    let primitive = wanted.starts_with(|c: char| c.is_ascii_lowercase());
    match v {
        Value::Object(_) => !primitive,
        Value::Bool(_) => wanted == "boolean",
        Value::Number(_) => matches!(wanted, "decimal" | "integer" | "positiveInt" | "unsignedInt" | "integer64"),
        Value::String(_) => primitive && wanted != "boolean",
        _ => false,
    }
}

fn item_is(it: Item<'_>, wanted: &str) -> bool {
    match it.ty {
        Some(t) => type_matches(t, wanted),
        None => shape_matches(it.value, wanted),
    }
}

/// The literal reference text of a Reference or canonical/uri item.
pub(crate) fn reference_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("reference").and_then(Value::as_str),
        _ => None,
    }
}

/// Does this reference point at a resource of type `ty`? Decided from the
/// reference text (`Patient/1`, `http://x/Patient/1`, `Patient/1/_history/2`)
/// or, for logical references, from `Reference.type`.
fn ref_is(it: Item<'_>, ty: &str) -> bool {
    if let Some(parts) = reference_text(it.value).and_then(crate::reference::parse) {
        return parts.ty == ty;
    }
    it.value.get("type").and_then(Value::as_str) == Some(ty)
}

fn emit<'a>(v: &'a Value, ty: Option<&'a str>, f: &mut dyn FnMut(Item<'a>) -> Flow) -> Flow {
    match v {
        Value::Array(a) => {
            for x in a {
                if !x.is_null() {
                    f(Item { value: x, ty })?;
                }
            }
            CONTINUE
        }
        Value::Null => CONTINUE,
        _ => f(Item { value: v, ty }),
    }
}

/// Whether the JSON key `key` is what [`member`] finds for the FHIRPath name `name` (the
/// name itself, or a choice variant such as `valueQuantity` for `value`).
pub(crate) fn member_matches(key: &str, name: &str) -> bool {
    key == name || choice_suffix(key, name).is_some()
}

fn member<'a>(it: Item<'a>, name: &str, f: &mut dyn FnMut(Item<'a>) -> Flow) -> Flow {
    let Value::Object(m) = it.value else {
        return CONTINUE;
    };
    if let Some(v) = m.get(name) {
        return emit(v, None, f);
    }
    for (k, v) in m {
        if let Some(suffix) = choice_suffix(k, name) {
            return emit(v, Some(suffix), f);
        }
    }
    CONTINUE
}

fn lit_equals(v: &Value, lit: &Value) -> bool {
    match (v, lit) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => match (crate::decimal::Dec::parse(a.as_str()), crate::decimal::Dec::parse(b.as_str())) {
            (Some(x), Some(y)) => x == y,
            _ => a.as_str() == b.as_str(),
        },
        _ => false,
    }
}

impl Node {
    fn contains_resolve(&self) -> bool {
        match self {
            Node::Resolve(_) => true,
            Node::Empty | Node::This | Node::TypeRoot(_) | Node::Lit(_) => false,
            Node::Member(b, _)
            | Node::Index(b, _)
            | Node::First(b)
            | Node::Last(b)
            | Node::As(b, _)
            | Node::Is(b, _)
            | Node::RefIs(b, _)
            | Node::Exists(b)
            | Node::EmptyFn(b)
            | Node::Not(b)
            | Node::Eq { left: b, .. } => b.contains_resolve(),
            Node::Where(a, b) | Node::And(a, b) | Node::Or(a, b) => a.contains_resolve() || b.contains_resolve(),
            Node::Union(v) => v.iter().any(Node::contains_resolve),
        }
    }

    /// Specialises a shared expression to one resource type: a leading
    /// `Observation` becomes `$this` for Observation and the empty collection
    /// for every other type, so a union like `AllergyIntolerance.patient |
    /// CarePlan.subject… | Observation.subject…` shrinks to one branch and the
    /// resource type is never compared at match time.
    pub(crate) fn specialize(&self, base: &str, is_domain: bool) -> Node {
        let s = |n: &Node| Box::new(n.specialize(base, is_domain));
        let wrap = |inner: Box<Node>, make: &dyn Fn(Box<Node>) -> Node| {
            if *inner == Node::Empty { Node::Empty } else { make(inner) }
        };
        match self {
            Node::TypeRoot(t) => {
                if t == base || t == "Resource" || (t == "DomainResource" && is_domain) {
                    Node::This
                } else {
                    Node::Empty
                }
            }
            Node::Empty | Node::This | Node::Lit(_) => self.clone(),
            Node::Member(b, n) => wrap(s(b), &|x| Node::Member(x, n.clone())),
            Node::Index(b, i) => wrap(s(b), &|x| Node::Index(x, *i)),
            Node::First(b) => wrap(s(b), &Node::First),
            Node::Last(b) => wrap(s(b), &Node::Last),
            Node::As(b, t) => wrap(s(b), &|x| Node::As(x, t.clone())),
            Node::RefIs(b, t) => wrap(s(b), &|x| Node::RefIs(x, t.clone())),
            Node::Resolve(b) => wrap(s(b), &Node::Resolve),
            Node::Where(b, c) => wrap(s(b), &|x| Node::Where(x, s(c))),
            Node::Union(v) => {
                let mut kept: Vec<Node> = v.iter().map(|n| n.specialize(base, is_domain)).filter(|n| *n != Node::Empty).collect();
                match kept.len() {
                    0 => Node::Empty,
                    1 => kept.pop().unwrap_or(Node::Empty),
                    _ => Node::Union(kept),
                }
            }
            // Boolean operators keep empty operands: `exists()` of nothing
            // is `false`, not "no result".
            Node::Is(b, t) => Node::Is(s(b), t.clone()),
            Node::Exists(b) => Node::Exists(s(b)),
            Node::EmptyFn(b) => Node::EmptyFn(s(b)),
            Node::Not(b) => Node::Not(s(b)),
            Node::And(a, b) => Node::And(s(a), s(b)),
            Node::Or(a, b) => Node::Or(s(a), s(b)),
            Node::Eq { left, lit, negate } => Node::Eq { left: s(left), lit: lit.clone(), negate: *negate },
        }
    }

    /// Adds to `out` the top-level members of the context item that evaluating this
    /// expression and reading its items can look at; false when it may read the context
    /// item beyond its members (e.g. the expression yields the item itself, or tests its
    /// type). A sound over-approximation: a resource pruned to those members (choice
    /// variants `value[x]` included, see [`member_matches`]) gives every search parameter
    /// the same values as the whole resource.
    pub(crate) fn context_members(&self, out: &mut std::collections::BTreeSet<String>) -> bool {
        self.touches(out) && !self.emits_context()
    }

    /// Whether items of this expression may be the context item itself.
    fn emits_context(&self) -> bool {
        match self {
            Node::This | Node::TypeRoot(_) => true,
            Node::Empty | Node::Lit(_) | Node::Member(..) | Node::Resolve(_) => false,
            Node::Index(b, _) | Node::First(b) | Node::Last(b) | Node::As(b, _) | Node::RefIs(b, _) | Node::Where(b, _) => b.emits_context(),
            Node::Union(v) => v.iter().any(Node::emits_context),
            Node::Is(..) | Node::Exists(_) | Node::EmptyFn(_) | Node::Not(_) | Node::And(..) | Node::Or(..) | Node::Eq { .. } => false,
        }
    }

    /// The context's members that evaluating this expression reads, not counting what a
    /// consumer reads of its items (see [`Node::context_members`]).
    fn touches(&self, out: &mut std::collections::BTreeSet<String>) -> bool {
        match self {
            Node::Empty | Node::This | Node::TypeRoot(_) | Node::Lit(_) => true,
            Node::Member(b, n) => {
                if b.emits_context() {
                    out.insert(n.clone());
                }
                b.touches(out)
            }
            Node::Index(b, _) | Node::First(b) | Node::Last(b) | Node::Resolve(b) | Node::Exists(b) | Node::EmptyFn(b) => b.touches(out),
            // These look into the item itself (its shape, its reference text).
            Node::As(b, _) | Node::RefIs(b, _) | Node::Is(b, _) => !b.emits_context() && b.touches(out),
            Node::Where(b, c) => b.touches(out) && (!b.emits_context() || c.bool_reads(out)),
            Node::Union(v) => v.iter().all(|n| n.touches(out)),
            Node::Not(b) => b.bool_reads(out),
            Node::And(a, b) | Node::Or(a, b) => a.bool_reads(out) && b.bool_reads(out),
            Node::Eq { left, .. } => left.context_members(out),
        }
    }

    /// What [`Node::eval_bool`] reads of its context.
    fn bool_reads(&self, out: &mut std::collections::BTreeSet<String>) -> bool {
        if self.is_boolean() { self.touches(out) } else { self.context_members(out) }
    }

    fn is_boolean(&self) -> bool {
        matches!(self, Node::Is(..) | Node::Exists(_) | Node::EmptyFn(_) | Node::Not(_) | Node::And(..) | Node::Or(..) | Node::Eq { .. })
    }

    /// Streams the items of this expression evaluated on `ctx` into `f`.
    pub(crate) fn eval<'a>(&'a self, ctx: Item<'a>, f: &mut dyn FnMut(Item<'a>) -> Flow) -> Flow {
        match self {
            Node::Empty | Node::Resolve(_) => CONTINUE,
            Node::This => f(ctx),
            Node::TypeRoot(t) => {
                // Only reached for unspecialised expressions.
                if ctx.value.get("resourceType").and_then(Value::as_str) == Some(t.as_str()) || t == "Resource" || t == "DomainResource" { f(ctx) } else { CONTINUE }
            }
            Node::Lit(v) => f(Item { value: v, ty: None }),
            Node::Member(b, name) => b.eval(ctx, &mut |it| member(it, name, &mut *f)),
            Node::Index(b, n) => nth(b, ctx, Some(*n), f),
            Node::First(b) => nth(b, ctx, Some(0), f),
            Node::Last(b) => nth(b, ctx, None, f),
            Node::Union(v) => {
                for n in v {
                    n.eval(ctx, f)?;
                }
                CONTINUE
            }
            Node::As(b, t) => b.eval(ctx, &mut |it| if item_is(it, t) { f(it) } else { CONTINUE }),
            Node::RefIs(b, t) => b.eval(ctx, &mut |it| if ref_is(it, t) { f(it) } else { CONTINUE }),
            Node::Where(b, c) => b.eval(ctx, &mut |it| {
                if c.eval_bool(it) == Some(true) { f(it) } else { CONTINUE }
            }),
            _ => match self.eval_bool(ctx) {
                Some(true) => f(Item { value: &TRUE, ty: Some("Boolean") }),
                Some(false) => f(Item { value: &FALSE, ty: Some("Boolean") }),
                None => CONTINUE,
            },
        }
    }

    fn any<'a>(&'a self, ctx: Item<'a>, mut p: impl FnMut(Item<'a>) -> bool) -> bool {
        self.eval(ctx, &mut |it| {
            if p(it) { ControlFlow::Break(()) } else { CONTINUE }
        })
        .is_break()
    }

    /// Boolean value with FHIRPath's three-valued logic (`None` = empty).
    pub(crate) fn eval_bool<'a>(&'a self, ctx: Item<'a>) -> Option<bool> {
        match self {
            Node::Exists(b) => Some(b.any(ctx, |_| true)),
            Node::EmptyFn(b) => Some(!b.any(ctx, |_| true)),
            Node::Not(b) => b.eval_bool(ctx).map(|x| !x),
            Node::And(a, b) => match (a.eval_bool(ctx), b.eval_bool(ctx)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Node::Or(a, b) => match (a.eval_bool(ctx), b.eval_bool(ctx)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Node::Is(b, t) => {
                let mut first = None;
                b.any(ctx, |it| {
                    first = Some(item_is(it, t));
                    true
                });
                first
            }
            Node::Eq { left, lit, negate } => {
                let mut seen = false;
                let hit = left.any(ctx, |it| {
                    seen = true;
                    lit_equals(it.value, lit)
                });
                // `x != lit` on an empty `x` is empty, not true.
                seen.then_some(hit != *negate)
            }
            other if !other.is_boolean() => {
                // A non-boolean collection in a boolean context: a single
                // boolean is its value, anything else present counts as true.
                let mut out = None;
                other.any(ctx, |it| {
                    out = Some(it.value.as_bool().unwrap_or(true));
                    true
                });
                out
            }
            _ => None,
        }
    }
}

/// `[n]` / `first()` (`Some(n)`) and `last()` (`None`).
fn nth<'a>(b: &'a Node, ctx: Item<'a>, n: Option<usize>, f: &mut dyn FnMut(Item<'a>) -> Flow) -> Flow {
    let mut i = 0usize;
    let mut pick = None;
    let _ = b.eval(ctx, &mut |it| {
        match n {
            Some(n) if i == n => {
                pick = Some(it);
                return ControlFlow::Break(());
            }
            None => pick = Some(it),
            _ => {}
        }
        i += 1;
        CONTINUE
    });
    match pick {
        Some(it) => f(it),
        None => CONTINUE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(expr: &str, base: &str, v: &Value) -> Vec<Value> {
        let n = compile(expr).unwrap().specialize(base, true);
        let mut out = vec![];
        let _ = n.eval(Item::root(v), &mut |it| {
            out.push(it.value.clone());
            CONTINUE
        });
        out
    }

    #[test]
    fn paths_unions_and_choice_types() {
        let obs = json!({
            "resourceType": "Observation",
            "code": {"text": "c"},
            "effectiveDateTime": "2021-01-01",
            "valueQuantity": {"value": 1},
            "component": [{"valueCodeableConcept": {"text": "x"}}, {"valueQuantity": {"value": 2}}]
        });
        assert_eq!(values("Observation.code | Patient.name", "Observation", &obs), vec![json!({"text": "c"})]);
        assert_eq!(values("Observation.effective", "Observation", &obs), vec![json!("2021-01-01")]);
        assert_eq!(values("(Observation.effective as dateTime)", "Observation", &obs).len(), 1);
        assert_eq!(values("(Observation.effective as Period)", "Observation", &obs).len(), 0);
        assert_eq!(values("Observation.value.as(Quantity)", "Observation", &obs).len(), 1);
        assert_eq!(values("Observation.value.ofType(Quantity)", "Observation", &obs).len(), 1);
        assert_eq!(values("(Observation.component.value as CodeableConcept).text", "Observation", &obs), vec![json!("x")]);
        assert_eq!(values("Observation.component.value.first()", "Observation", &obs), vec![json!({"text": "x"})]);
        assert_eq!(values("Observation.component[1].value", "Observation", &obs), vec![json!({"value": 2})]);
        assert_eq!(values("Observation.component.value.last()", "Observation", &obs), vec![json!({"value": 2})]);
        assert_eq!(values("Patient.name", "Observation", &obs).len(), 0);
    }

    #[test]
    fn where_filters() {
        let p = json!({
            "resourceType": "Patient",
            "telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "123"}],
            "link": [{"other": {"reference": "Patient/2"}}, {"other": {"reference": "RelatedPerson/3"}}],
            "deceasedDateTime": "2020-01-01"
        });
        assert_eq!(values("Patient.telecom.where(system='phone')", "Patient", &p), vec![json!({"system": "phone", "value": "123"})]);
        assert_eq!(values("Patient.link.other.where(resolve() is Patient)", "Patient", &p), vec![json!({"reference": "Patient/2"})]);
        assert_eq!(values("Patient.deceased.exists() and Patient.deceased != false", "Patient", &p), vec![json!(true)]);
        let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
        assert_eq!(values("Patient.deceased.exists() and Patient.deceased != false", "Patient", &alive), vec![json!(false)]);
        let unknown = json!({"resourceType": "Patient"});
        assert_eq!(values("Patient.deceased.exists() and Patient.deceased != false", "Patient", &unknown), vec![json!(false)]);
        assert_eq!(values("Patient.telecom.exists(system='phone')", "Patient", &p), vec![json!(true)]);
        assert_eq!(values("Patient.telecom.where(system='fax').empty()", "Patient", &p), vec![json!(true)]);
    }

    #[test]
    fn compile_errors_not_panics() {
        for bad in [
            "",
            "Patient.",
            "Patient.name.where(",
            "resolve()",
            "Patient.name.foo()",
            "a + b",
            "Patient.name[x]",
            "'unterminated",
            "%resource.id",
            "Patient.a = Patient.b",
            "((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((a)))))",
        ] {
            assert!(compile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_is_not_status_reason() {
        let r = json!({"resourceType": "MedicationRequest", "statusReason": {"text": "x"}});
        assert!(values("MedicationRequest.status", "MedicationRequest", &r).is_empty());
    }
}

//! Which messages a subscription wants: RocketMQ's tag expressions (`*`, `a || b`) and its SQL92
//! subset over message properties, parsed once when the subscription is made and evaluated per
//! message on the broker.
//!
//! The SQL subset is RocketMQ's: comparisons (`=`, `<>`, `<`, `<=`, `>`, `>=`), `AND`, `OR`,
//! `NOT`, `BETWEEN`, `IN`, `IS [NOT] NULL`, `TRUE`/`FALSE` and parentheses, over properties
//! named by identifiers (`TAGS` is the message's tag). Values of properties are strings: compared
//! with a number, or ordered, they are read as numbers; compared with `TRUE`/`FALSE`, as booleans.
//! A missing property is `NULL`, and a comparison with `NULL` is neither true nor false, so the
//! message does not match, also under `NOT`.
//!
//! What the parser can see is checked when the filter is made (an error names line, column and
//! reason). What depends on a message (a property `abc` compared with `5`) makes that message not
//! match, as in RocketMQ: it never fails a read.

use std::collections::BTreeSet;
use std::fmt;

use sqlparser::ast::{BinaryOperator, Expr as Ast, InTarget, Spanned, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token};

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 8192;
/// Deepest nesting of the SQL parser's recursion.
const MAX_DEPTH: usize = 64;
/// The name under which a SQL filter sees a message's tag.
pub const TAGS: &str = "TAGS";

/// The two languages of a subscription's expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `*` (or empty) for every message, or `a || b`.
    Tag,
    /// RocketMQ's SQL92 subset over properties.
    Sql,
}

/// Why an expression was refused. `line` and `column` start at 1; both 0 when the error has no
/// place (an expression too long or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub line: u64,
    pub column: u64,
    pub reason: String,
}

impl FilterError {
    fn at(place: Location, reason: impl Into<String>) -> Self {
        FilterError {
            line: place.line,
            column: place.column,
            reason: reason.into(),
        }
    }

    fn nowhere(reason: impl Into<String>) -> Self {
        Self::at(Location { line: 0, column: 0 }, reason)
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.reason)
        } else {
            write!(f, "line {}, column {}: {}", self.line, self.column, self.reason)
        }
    }
}

impl std::error::Error for FilterError {}

/// A parsed filter.
#[derive(Debug, Clone)]
pub struct Filter(Inner);

#[derive(Debug, Clone)]
enum Inner {
    All,
    Tags(BTreeSet<String>),
    Sql(Expr),
}

impl Filter {
    /// Every message.
    pub fn all() -> Filter {
        Filter(Inner::All)
    }

    pub fn parse(kind: Kind, expression: &str) -> Result<Filter, FilterError> {
        match kind {
            Kind::Tag => Self::tags(expression),
            Kind::Sql => Self::sql(expression),
        }
    }

    /// A tag expression: `*` or empty for every message, else tags joined by `||`.
    pub fn tags(expression: &str) -> Result<Filter, FilterError> {
        let e = expression.trim();
        if e.is_empty() || e == "*" {
            return Ok(Filter::all());
        }
        let tags: BTreeSet<String> = e.split("||").map(|t| t.trim().to_owned()).collect();
        if tags.iter().any(|t| t.is_empty()) {
            return Err(FilterError::nowhere(format!(
                "tag expression {expression:?} has an empty tag"
            )));
        }
        Ok(Filter(Inner::Tags(tags)))
    }

    /// A SQL92 condition over properties.
    pub fn sql(expression: &str) -> Result<Filter, FilterError> {
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(FilterError::nowhere(format!(
                "the SQL expression is {} bytes; at most {MAX_EXPRESSION_LEN} are accepted",
                expression.len()
            )));
        }
        if expression.trim().is_empty() {
            return Err(FilterError::nowhere("the SQL expression is empty"));
        }
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect)
            .with_recursion_limit(MAX_DEPTH)
            .try_with_sql(expression)
            .map_err(|e| parser_error(expression, e))?;
        let ast = parser.parse_expr().map_err(|e| parser_error(expression, e))?;
        let next = parser.peek_token();
        if next.token != Token::EOF {
            return Err(FilterError::at(
                next.span.start,
                format!("unexpected `{}` after the end of the condition", next.token),
            ));
        }
        let (expr, ty) = compile(&ast)?;
        condition(&ast, ty)?;
        Ok(Filter(Inner::Sql(expr)))
    }

    /// Whether matching needs the message's properties, not only its tag.
    pub fn is_sql(&self) -> bool {
        matches!(self.0, Inner::Sql(_))
    }

    /// Whether every message matches.
    pub fn is_all(&self) -> bool {
        matches!(self.0, Inner::All)
    }

    /// The verdict on a tag alone: `false` rules the message out; `true` lets it through to
    /// [`matches`](Self::matches) for a SQL filter, and is the verdict otherwise.
    pub fn matches_tags(&self, tags: &str) -> bool {
        match &self.0 {
            Inner::All | Inner::Sql(_) => true,
            Inner::Tags(set) => set.contains(tags),
        }
    }

    /// Whether a message with this tag and these properties matches.
    pub fn matches(&self, tags: &str, properties: &[(String, String)]) -> bool {
        match &self.0 {
            Inner::All => true,
            Inner::Tags(set) => set.contains(tags),
            Inner::Sql(expr) => {
                let message = Message { tags, properties };
                matches!(expr.test(&message), Ok(Some(true)))
            }
        }
    }
}

fn parser_error(expression: &str, e: ParserError) -> FilterError {
    let text = match e {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
        ParserError::RecursionLimitExceeded => {
            return FilterError::nowhere(format!("the SQL expression nests deeper than {MAX_DEPTH} levels"))
        }
    };
    // sqlparser ends its messages with " at Line: L, Column: C".
    if let Some((reason, place)) = text.rsplit_once(" at Line: ") {
        if let Some((line, column)) = place.split_once(", Column: ") {
            if let (Ok(line), Ok(column)) = (line.parse(), column.trim().parse()) {
                return FilterError::at(Location { line, column }, reason.trim());
            }
        }
    }
    if text.ends_with("found: EOF") {
        // Placed just past the last character.
        let line = expression.lines().count().max(1) as u64;
        let last = expression.rsplit('\n').next().unwrap_or("");
        let column = last.chars().count() as u64 + 1;
        let reason = text.replace("found: EOF", "found the end of the expression");
        return FilterError::at(Location { line, column }, reason);
    }
    FilterError::nowhere(text)
}

/// A compiled condition or value.
#[derive(Debug, Clone)]
enum Expr {
    Property(String),
    Literal(Literal),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Op, Box<Expr>, Box<Expr>),
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Literal>,
        negated: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// `IS [NOT] TRUE|FALSE`: never unknown.
    Is {
        expr: Box<Expr>,
        value: bool,
        negated: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// What an expression is, as far as the parser can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Condition,
    Property,
    Str,
    Number,
    Bool,
    Null,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Condition => "a condition",
            Ty::Property => "a property",
            Ty::Str => "a string",
            Ty::Number => "a number",
            Ty::Bool => "a boolean",
            Ty::Null => "NULL",
        }
    }
}

fn start(ast: &Ast) -> Location {
    ast.span().start
}

/// Checks that `ast`, of type `ty`, can stand where a condition is wanted.
fn condition(ast: &Ast, ty: Ty) -> Result<(), FilterError> {
    match ty {
        Ty::Condition | Ty::Property | Ty::Bool | Ty::Null => Ok(()),
        Ty::Str | Ty::Number => Err(FilterError::at(
            start(ast),
            format!("`{ast}` is {}, not a condition", ty.name()),
        )),
    }
}

/// Checks that `ast`, of type `ty`, can be compared.
fn value(ast: &Ast, ty: Ty) -> Result<(), FilterError> {
    if ty == Ty::Condition {
        return Err(FilterError::at(
            start(ast),
            format!("`{ast}` is a condition; conditions cannot be compared"),
        ));
    }
    Ok(())
}

fn unsupported(ast: &Ast) -> FilterError {
    FilterError::at(
        start(ast),
        format!(
            "`{ast}` is not supported: use properties, literals, comparisons, AND, OR, NOT, \
             BETWEEN, IN and IS [NOT] NULL"
        ),
    )
}

fn literal(ast: &Ast, v: &Value, negative: bool) -> Result<(Literal, Ty), FilterError> {
    let lit = match v {
        Value::Number(n, _) => {
            let text = if negative { format!("-{n}") } else { n.clone() };
            match text.parse::<i64>() {
                Ok(i) => Literal::Int(i),
                Err(_) => match text.parse::<f64>() {
                    Ok(f) if f.is_finite() => Literal::Float(f),
                    _ => return Err(FilterError::at(start(ast), format!("`{text}` is not a number"))),
                },
            }
        }
        _ if negative => return Err(FilterError::at(start(ast), "only a number can be negated with `-`")),
        Value::SingleQuotedString(s) => Literal::Str(s.clone()),
        Value::Boolean(b) => Literal::Bool(*b),
        Value::Null => Literal::Null,
        _ => return Err(unsupported(ast)),
    };
    let ty = match lit {
        Literal::Str(_) => Ty::Str,
        Literal::Int(_) | Literal::Float(_) => Ty::Number,
        Literal::Bool(_) => Ty::Bool,
        Literal::Null => Ty::Null,
    };
    Ok((lit, ty))
}

/// Checks that two sides of `=` or `<>` can be compared at all.
fn comparable(ast: &Ast, l: Ty, r: Ty) -> Result<(), FilterError> {
    let clash = matches!(
        (l, r),
        (Ty::Str, Ty::Number)
            | (Ty::Number, Ty::Str)
            | (Ty::Str, Ty::Bool)
            | (Ty::Bool, Ty::Str)
            | (Ty::Number, Ty::Bool)
            | (Ty::Bool, Ty::Number)
    );
    if clash {
        return Err(FilterError::at(
            start(ast),
            format!("`{ast}` compares {} with {}", l.name(), r.name()),
        ));
    }
    Ok(())
}

/// Checks that `ast` can be ordered (`<`, `BETWEEN`): a number, a property or NULL.
fn orderable(ast: &Ast, ty: Ty) -> Result<(), FilterError> {
    value(ast, ty)?;
    match ty {
        Ty::Number | Ty::Property | Ty::Null => Ok(()),
        _ => Err(FilterError::at(
            start(ast),
            format!(
                "`{ast}` is {}; only numbers can be ordered (strings are compared with = and <>)",
                ty.name()
            ),
        )),
    }
}

fn compile(ast: &Ast) -> Result<(Expr, Ty), FilterError> {
    let b = Box::new;
    Ok(match ast {
        Ast::Identifier(ident) => (Expr::Property(ident.value.clone()), Ty::Property),
        Ast::CompoundIdentifier(parts) => (
            Expr::Property(parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".")),
            Ty::Property,
        ),
        Ast::Value(v) => {
            let (lit, ty) = literal(ast, &v.value, false)?;
            (Expr::Literal(lit), ty)
        }
        Ast::Nested(inner) => compile(inner)?,
        Ast::UnaryOp { op, expr } => match op {
            UnaryOperator::Not => {
                let (e, ty) = compile(expr)?;
                condition(expr, ty)?;
                (Expr::Not(b(e)), Ty::Condition)
            }
            UnaryOperator::Minus | UnaryOperator::Plus => {
                let Ast::Value(v) = expr.as_ref() else {
                    return Err(FilterError::at(
                        start(ast),
                        format!("`{ast}`: only a number literal can carry a sign"),
                    ));
                };
                let (lit, ty) = literal(ast, &v.value, *op == UnaryOperator::Minus)?;
                if ty != Ty::Number {
                    return Err(FilterError::at(start(ast), "only a number can carry a sign"));
                }
                (Expr::Literal(lit), ty)
            }
            _ => return Err(unsupported(ast)),
        },
        Ast::BinaryOp { left, op, right } => {
            let (l, lt) = compile(left)?;
            let (r, rt) = compile(right)?;
            match op {
                BinaryOperator::And | BinaryOperator::Or => {
                    condition(left, lt)?;
                    condition(right, rt)?;
                    let e = if *op == BinaryOperator::And {
                        Expr::And(b(l), b(r))
                    } else {
                        Expr::Or(b(l), b(r))
                    };
                    (e, Ty::Condition)
                }
                BinaryOperator::Eq | BinaryOperator::NotEq => {
                    value(left, lt)?;
                    value(right, rt)?;
                    comparable(ast, lt, rt)?;
                    let op = if *op == BinaryOperator::Eq { Op::Eq } else { Op::Ne };
                    (Expr::Compare(op, b(l), b(r)), Ty::Condition)
                }
                BinaryOperator::Lt | BinaryOperator::LtEq | BinaryOperator::Gt | BinaryOperator::GtEq => {
                    orderable(left, lt)?;
                    orderable(right, rt)?;
                    let op = match op {
                        BinaryOperator::Lt => Op::Lt,
                        BinaryOperator::LtEq => Op::Le,
                        BinaryOperator::Gt => Op::Gt,
                        _ => Op::Ge,
                    };
                    (Expr::Compare(op, b(l), b(r)), Ty::Condition)
                }
                _ => return Err(unsupported(ast)),
            }
        }
        Ast::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let (e, et) = compile(expr)?;
            let (lo, lot) = compile(low)?;
            let (hi, hit) = compile(high)?;
            orderable(expr, et)?;
            orderable(low, lot)?;
            orderable(high, hit)?;
            (
                Expr::Between {
                    expr: b(e),
                    low: b(lo),
                    high: b(hi),
                    negated: *negated,
                },
                Ty::Condition,
            )
        }
        Ast::In {
            expr,
            target: InTarget::List(items),
            negated,
            ..
        } => {
            let (e, et) = compile(expr)?;
            value(expr, et)?;
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                let (lit, ty) = match compile(item)? {
                    (Expr::Literal(lit), ty) => (lit, ty),
                    _ => {
                        return Err(FilterError::at(
                            start(item),
                            format!("`{item}`: an IN list holds literals only"),
                        ))
                    }
                };
                comparable(item, et, ty)?;
                list.push(lit);
            }
            (
                Expr::In {
                    expr: b(e),
                    list,
                    negated: *negated,
                },
                Ty::Condition,
            )
        }
        Ast::IsNull(expr) | Ast::IsNotNull(expr) => {
            let (e, et) = compile(expr)?;
            value(expr, et)?;
            (
                Expr::IsNull {
                    expr: b(e),
                    negated: matches!(ast, Ast::IsNotNull(_)),
                },
                Ty::Condition,
            )
        }
        Ast::IsTrue(expr) | Ast::IsNotTrue(expr) | Ast::IsFalse(expr) | Ast::IsNotFalse(expr) => {
            let (e, et) = compile(expr)?;
            condition(expr, et)?;
            (
                Expr::Is {
                    expr: b(e),
                    value: matches!(ast, Ast::IsTrue(_) | Ast::IsNotTrue(_)),
                    negated: matches!(ast, Ast::IsNotTrue(_) | Ast::IsNotFalse(_)),
                },
                Ty::Condition,
            )
        }
        _ => return Err(unsupported(ast)),
    })
}

/// A message as a filter sees it.
struct Message<'a> {
    tags: &'a str,
    properties: &'a [(String, String)],
}

impl<'a> Message<'a> {
    fn property(&self, name: &str) -> Option<&'a str> {
        if name == TAGS {
            return (!self.tags.is_empty()).then_some(self.tags);
        }
        self.properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A value met while evaluating.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// The message cannot be judged (a string where a number is wanted): it does not match.
#[derive(Debug)]
struct Skip;

/// Three-valued truth: `None` is SQL's unknown.
type Truth = Result<Option<bool>, Skip>;

fn number(v: Val<'_>) -> Result<Option<Val<'_>>, Skip> {
    match v {
        Val::Null => Ok(None),
        Val::Int(_) | Val::Float(_) => Ok(Some(v)),
        Val::Str(s) => match s.parse::<i64>() {
            Ok(i) => Ok(Some(Val::Int(i))),
            Err(_) => s.parse::<f64>().map(|f| Some(Val::Float(f))).map_err(|_| Skip),
        },
        Val::Bool(_) => Err(Skip),
    }
}

fn boolean(v: Val<'_>) -> Truth {
    match v {
        Val::Null => Ok(None),
        Val::Bool(b) => Ok(Some(b)),
        Val::Str(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Val::Str(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        _ => Err(Skip),
    }
}

fn order(l: Val<'_>, r: Val<'_>) -> Result<Option<std::cmp::Ordering>, Skip> {
    let (Some(l), Some(r)) = (number(l)?, number(r)?) else {
        return Ok(None);
    };
    Ok(match (l, r) {
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(&b)),
        (a, b) => {
            let f = |v| match v {
                Val::Int(i) => i as f64,
                Val::Float(f) => f,
                _ => f64::NAN,
            };
            f(a).partial_cmp(&f(b))
        }
    })
}

fn equal(l: Val<'_>, r: Val<'_>) -> Truth {
    match (l, r) {
        (Val::Null, _) | (_, Val::Null) => Ok(None),
        (Val::Str(a), Val::Str(b)) => Ok(Some(a == b)),
        (Val::Bool(_), _) | (_, Val::Bool(_)) => Ok(boolean(l)?.zip(boolean(r)?).map(|(a, b)| a == b)),
        _ => Ok(order(l, r)?.map(|o| o.is_eq())),
    }
}

impl Literal {
    fn val(&self) -> Val<'_> {
        match self {
            Literal::Str(s) => Val::Str(s),
            Literal::Int(i) => Val::Int(*i),
            Literal::Float(f) => Val::Float(*f),
            Literal::Bool(b) => Val::Bool(*b),
            Literal::Null => Val::Null,
        }
    }
}

fn not(t: Option<bool>) -> Option<bool> {
    t.map(|b| !b)
}

impl Expr {
    fn value<'a>(&'a self, m: &Message<'a>) -> Result<Val<'a>, Skip> {
        Ok(match self {
            Expr::Property(name) => m.property(name).map_or(Val::Null, Val::Str),
            Expr::Literal(lit) => lit.val(),
            _ => self.test(m)?.map_or(Val::Null, Val::Bool),
        })
    }

    fn test<'a>(&'a self, m: &Message<'a>) -> Truth {
        match self {
            Expr::Property(_) | Expr::Literal(_) => boolean(self.value(m)?),
            Expr::Not(e) => Ok(not(e.test(m)?)),
            Expr::And(l, r) => {
                let l = l.test(m)?;
                if l == Some(false) {
                    return Ok(Some(false));
                }
                Ok(match (l, r.test(m)?) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                })
            }
            Expr::Or(l, r) => {
                let l = l.test(m)?;
                if l == Some(true) {
                    return Ok(Some(true));
                }
                Ok(match (l, r.test(m)?) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                })
            }
            Expr::Compare(op, l, r) => {
                let (l, r) = (l.value(m)?, r.value(m)?);
                match op {
                    Op::Eq => equal(l, r),
                    Op::Ne => Ok(not(equal(l, r)?)),
                    Op::Lt => Ok(order(l, r)?.map(|o| o.is_lt())),
                    Op::Le => Ok(order(l, r)?.map(|o| o.is_le())),
                    Op::Gt => Ok(order(l, r)?.map(|o| o.is_gt())),
                    Op::Ge => Ok(order(l, r)?.map(|o| o.is_ge())),
                }
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let v = expr.value(m)?;
                let above = order(v, low.value(m)?)?.map(|o| o.is_ge());
                let below = order(v, high.value(m)?)?.map(|o| o.is_le());
                let inside = match (above, below) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                Ok(if *negated { not(inside) } else { inside })
            }
            Expr::In { expr, list, negated } => {
                let v = expr.value(m)?;
                let mut found = Some(false);
                for item in list {
                    match equal(v, item.val())? {
                        Some(true) => {
                            found = Some(true);
                            break;
                        }
                        None => found = None,
                        Some(false) => {}
                    }
                }
                Ok(if *negated { not(found) } else { found })
            }
            Expr::IsNull { expr, negated } => {
                let null = matches!(expr.value(m)?, Val::Null);
                Ok(Some(null != *negated))
            }
            Expr::Is { expr, value, negated } => {
                let is = expr.test(m)? == Some(*value);
                Ok(Some(is != *negated))
            }
        }
    }
}

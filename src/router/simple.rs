//! A recogniser for the simplest SELECTs, so that the commonest reads skip
//! sqlparser's full parse (about 60% of a cold classification).
//!
//! It accepts a deliberately small grammar, a subset of what both PostgreSQL
//! and sqlparser accept, that cannot hold anything the AST walk in `ast.rs`
//! looks for: no WITH (data-modifying CTEs), no INTO, no FOR (locking), no
//! subqueries or derived tables, no set operations, no INSERT/UPDATE/DELETE/
//! MERGE. Function calls and locking clauses are found by the token scan in
//! either case, so for an accepted statement the full path's answer is
//! exactly `Verdict::read("select")` too; the unit tests check that property
//! on every statement of the case table and on thousands of generated ones.
//!
//! ```text
//! select  := SELECT [DISTINCT] target {, target} [FROM from {, from}] [WHERE expr]
//!            [GROUP BY expr {, expr}] [HAVING expr] [ORDER BY sort {, sort}]
//!            [LIMIT value] [OFFSET value]
//! target  := * | ident . * | expr [[AS] alias]
//! from    := table {join}        join := [INNER | LEFT|RIGHT|FULL [OUTER]] JOIN table ON expr
//! table   := name [[AS] alias]                                 | CROSS JOIN table
//! sort    := expr [ASC|DESC] [NULLS FIRST|LAST]                value := number | $n
//! expr    := and {OR and}        and := not {AND not}          not := NOT not | pred
//! pred    := arith [cmp arith | IS [NOT] NULL | [NOT] IN (arith {, arith})
//!            | [NOT] BETWEEN arith AND arith | [NOT] LIKE|ILIKE arith]
//! arith   := unary {+|-|*|/|%|'||' unary}                      unary := {+|-} postfix
//! postfix := primary {:: type}
//! primary := number | $n | 'string' | NULL | TRUE | FALSE | ( expr ) | name [( args )]
//! args    := | * | [DISTINCT] expr {, expr}
//! ```
//!
//! Identifiers are words sqlparser does not know as keywords (or quoted),
//! plus a few keywords verified to parse as plain names; an alias without
//! AS is never a keyword. Anything else, however harmless, falls back to the full parse:
//! this module must only ever answer "certainly a plain SELECT", never guess.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Word};

/// Nesting allowed (parentheses, calls, unary operators): far below
/// sqlparser's recursion limit, so the full parse could not fail on depth.
const MAX_DEPTH: usize = 8;

/// Keywords that still parse as plain column or table names (common ones).
const NAME_KEYWORDS: &[Keyword] = &[
    Keyword::DATA,
    Keyword::ID,
    Keyword::KEY,
    Keyword::NAME,
    Keyword::STATUS,
    Keyword::TYPE,
    Keyword::VALUE,
    Keyword::VERSION,
];

/// Keywords that parse as plain function names.
const FUNCTION_KEYWORDS: &[Keyword] = &[
    Keyword::ABS,
    Keyword::AVG,
    Keyword::COUNT,
    Keyword::LOWER,
    Keyword::MAX,
    Keyword::MIN,
    Keyword::SUM,
    Keyword::UPPER,
];

/// Type keywords accepted after `::`.
const TYPE_KEYWORDS: &[Keyword] = &[
    Keyword::BIGINT,
    Keyword::BOOLEAN,
    Keyword::INT,
    Keyword::INTEGER,
    Keyword::NUMERIC,
    Keyword::SMALLINT,
    Keyword::TEXT,
    Keyword::UUID,
];

/// Whether a statement's significant tokens (no `;`) are a SELECT of the
/// grammar above.
pub(crate) fn is_simple_select(sig: &[&Token]) -> bool {
    let mut p = Cursor {
        sig,
        pos: 0,
        depth: 0,
    };
    p.select().is_some() && p.pos == sig.len()
}

/// `None` means "not in the grammar": every rule returns `Option<()>` so
/// that `?` aborts the whole recognition at the first surprise.
type Accept = Option<()>;

struct Cursor<'a> {
    sig: &'a [&'a Token],
    pos: usize,
    depth: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<&'a Token> {
        self.sig.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<&'a Token> {
        self.sig.get(self.pos + ahead).copied()
    }

    fn eat(&mut self, token: &Token) -> bool {
        let hit = self.peek() == Some(token);
        self.pos += usize::from(hit);
        hit
    }

    fn expect(&mut self, token: &Token) -> Accept {
        self.eat(token).then_some(())
    }

    fn eat_kw(&mut self, kw: Keyword) -> bool {
        let hit = self.peek().is_some_and(|t| is_keyword(t, kw));
        self.pos += usize::from(hit);
        hit
    }

    fn expect_kw(&mut self, kw: Keyword) -> Accept {
        self.eat_kw(kw).then_some(())
    }

    /// Takes the next token if `accept` says it is the right kind of word.
    fn eat_word(&mut self, accept: impl Fn(&Word) -> bool) -> bool {
        let hit = matches!(self.peek(), Some(Token::Word(w)) if accept(w));
        self.pos += usize::from(hit);
        hit
    }

    fn nest(&mut self) -> Accept {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn select(&mut self) -> Accept {
        self.expect_kw(Keyword::SELECT)?;
        self.eat_kw(Keyword::DISTINCT);
        self.list(Self::target)?;
        if self.eat_kw(Keyword::FROM) {
            self.list(Self::source)?;
        }
        if self.eat_kw(Keyword::WHERE) {
            self.expr()?;
        }
        if self.eat_kw(Keyword::GROUP) {
            self.expect_kw(Keyword::BY)?;
            self.list(Self::expr)?;
        }
        if self.eat_kw(Keyword::HAVING) {
            self.expr()?;
        }
        if self.eat_kw(Keyword::ORDER) {
            self.expect_kw(Keyword::BY)?;
            self.list(Self::sort)?;
        }
        if self.eat_kw(Keyword::LIMIT) {
            self.value()?;
        }
        if self.eat_kw(Keyword::OFFSET) {
            self.value()?;
        }
        Some(())
    }

    /// `item {, item}`
    fn list(&mut self, item: fn(&mut Self) -> Accept) -> Accept {
        item(self)?;
        while self.eat(&Token::Comma) {
            item(self)?;
        }
        Some(())
    }

    fn target(&mut self) -> Accept {
        if self.eat(&Token::Mul) {
            return Some(());
        }
        let star = matches!(self.peek(), Some(Token::Word(w)) if is_name(w))
            && self.peek_at(1) == Some(&Token::Period)
            && self.peek_at(2) == Some(&Token::Mul);
        if star {
            self.pos += 3;
            return Some(());
        }
        self.expr()?;
        self.alias()
    }

    /// `[[AS] alias]`: a bare alias must not be a keyword at all.
    fn alias(&mut self) -> Accept {
        if self.eat_kw(Keyword::AS) {
            return self.eat_word(is_name).then_some(());
        }
        self.eat_word(is_plain_identifier);
        Some(())
    }

    fn source(&mut self) -> Accept {
        self.table()?;
        loop {
            if self.eat_kw(Keyword::CROSS) {
                self.expect_kw(Keyword::JOIN)?;
                self.table()?;
                continue;
            }
            let joins = if self.eat_kw(Keyword::INNER) {
                true
            } else if [Keyword::LEFT, Keyword::RIGHT, Keyword::FULL]
                .into_iter()
                .any(|kw| self.eat_kw(kw))
            {
                self.eat_kw(Keyword::OUTER);
                true
            } else {
                self.peek().is_some_and(|t| is_keyword(t, Keyword::JOIN))
            };
            if !joins {
                return Some(());
            }
            self.expect_kw(Keyword::JOIN)?;
            self.table()?;
            self.expect_kw(Keyword::ON)?;
            self.expr()?;
        }
    }

    fn table(&mut self) -> Accept {
        self.name()?;
        self.alias()
    }

    /// `ident {. ident}` with at most three parts.
    fn name(&mut self) -> Accept {
        self.eat_word(is_name).then_some(())?;
        for _ in 0..2 {
            let more = self.peek() == Some(&Token::Period)
                && matches!(self.peek_at(1), Some(Token::Word(w)) if is_name(w));
            if !more {
                break;
            }
            self.pos += 2;
        }
        Some(())
    }

    fn sort(&mut self) -> Accept {
        self.expr()?;
        if !self.eat_kw(Keyword::ASC) {
            self.eat_kw(Keyword::DESC);
        }
        if self.eat_kw(Keyword::NULLS) && !self.eat_kw(Keyword::FIRST) {
            self.expect_kw(Keyword::LAST)?;
        }
        Some(())
    }

    fn value(&mut self) -> Accept {
        matches!(self.peek(), Some(Token::Number(..) | Token::Placeholder(_))).then_some(())?;
        self.pos += 1;
        Some(())
    }

    fn expr(&mut self) -> Accept {
        self.nest()?;
        self.and()?;
        while self.eat_kw(Keyword::OR) {
            self.and()?;
        }
        self.depth -= 1;
        Some(())
    }

    fn and(&mut self) -> Accept {
        self.not()?;
        while self.eat_kw(Keyword::AND) {
            self.not()?;
        }
        Some(())
    }

    fn not(&mut self) -> Accept {
        let mut nots = 0;
        while self.eat_kw(Keyword::NOT) {
            nots += 1;
            (nots <= MAX_DEPTH).then_some(())?;
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Accept {
        self.arith()?;
        if self.eat_word_if_cmp() {
            return self.arith();
        }
        if self.eat_kw(Keyword::IS) {
            self.eat_kw(Keyword::NOT);
            return self.expect_kw(Keyword::NULL);
        }
        let negated = self.peek().is_some_and(|t| is_keyword(t, Keyword::NOT))
            && self.peek_at(1).is_some_and(|t| {
                [Keyword::IN, Keyword::BETWEEN, Keyword::LIKE, Keyword::ILIKE]
                    .into_iter()
                    .any(|kw| is_keyword(t, kw))
            });
        self.pos += usize::from(negated);
        if self.eat_kw(Keyword::IN) {
            self.expect(&Token::LParen)?;
            self.list(Self::arith)?;
            return self.expect(&Token::RParen);
        }
        if self.eat_kw(Keyword::BETWEEN) {
            self.arith()?;
            self.expect_kw(Keyword::AND)?;
            return self.arith();
        }
        if self.eat_kw(Keyword::LIKE) || self.eat_kw(Keyword::ILIKE) {
            return self.arith();
        }
        (!negated).then_some(())
    }

    fn eat_word_if_cmp(&mut self) -> bool {
        let cmp = matches!(
            self.peek(),
            Some(Token::Eq | Token::Neq | Token::Lt | Token::Gt | Token::LtEq | Token::GtEq)
        );
        self.pos += usize::from(cmp);
        cmp
    }

    fn arith(&mut self) -> Accept {
        self.unary()?;
        while matches!(
            self.peek(),
            Some(
                Token::Plus
                    | Token::Minus
                    | Token::Mul
                    | Token::Div
                    | Token::Mod
                    | Token::StringConcat
            )
        ) {
            self.pos += 1;
            self.unary()?;
        }
        Some(())
    }

    fn unary(&mut self) -> Accept {
        let mut signs = 0;
        while matches!(self.peek(), Some(Token::Plus | Token::Minus)) {
            self.pos += 1;
            signs += 1;
            (signs <= MAX_DEPTH).then_some(())?;
        }
        self.primary()?;
        while self.eat(&Token::DoubleColon) {
            let is_type = |w: &Word| is_plain_identifier(w) || TYPE_KEYWORDS.contains(&w.keyword);
            self.eat_word(is_type).then_some(())?;
        }
        Some(())
    }

    fn primary(&mut self) -> Accept {
        let literal = match self.peek()? {
            Token::Number(..) | Token::Placeholder(_) | Token::SingleQuotedString(_) => true,
            Token::Word(w) => [Keyword::NULL, Keyword::TRUE, Keyword::FALSE]
                .into_iter()
                .any(|kw| w.quote_style.is_none() && w.keyword == kw),
            _ => false,
        };
        if literal {
            self.pos += 1;
            return Some(());
        }
        if self.eat(&Token::LParen) {
            self.expr()?;
            return self.expect(&Token::RParen);
        }
        if self.peek_at(1) == Some(&Token::LParen) {
            self.eat_word(|w| is_name(w) || FUNCTION_KEYWORDS.contains(&w.keyword))
                .then_some(())?;
            return self.call_args();
        }
        self.name()?;
        if self.peek() == Some(&Token::LParen) {
            return self.call_args();
        }
        Some(())
    }

    /// `( [* | [DISTINCT] expr {, expr}] )`, the `(` not yet taken.
    fn call_args(&mut self) -> Accept {
        self.expect(&Token::LParen)?;
        self.nest()?;
        if !self.eat(&Token::Mul) && self.peek() != Some(&Token::RParen) {
            self.eat_kw(Keyword::DISTINCT);
            self.list(Self::expr)?;
        }
        self.depth -= 1;
        self.expect(&Token::RParen)
    }
}

/// An unquoted word that is keyword `kw`.
fn is_keyword(token: &Token, kw: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.keyword == kw)
}

/// A word usable as an alias: quoted, or no keyword at all.
fn is_plain_identifier(w: &Word) -> bool {
    match w.quote_style {
        Some(q) => q == '"',
        None => w.keyword == Keyword::NoKeyword,
    }
}

/// A word usable as a column, table or schema name.
fn is_name(w: &Word) -> bool {
    is_plain_identifier(w) || (w.quote_style.is_none() && NAME_KEYWORDS.contains(&w.keyword))
}

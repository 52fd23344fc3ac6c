//! The simple-SELECT recogniser must never disagree with the full parse:
//! whatever it accepts, `ast::classify_tokens` classifies as a plain select.
//! Checked on the case table, on fixed lists, and on generated statements
//! (random sentences of the grammar, with hostile words mixed in, and random
//! mutations of them).

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::Tokenizer;

use super::super::{Verdict, ast, keywords, simple};
use super::cases::CASES;

/// Whether `sql` is a single statement the recogniser accepts; panics if it
/// accepts one that the full parse does not call a plain select.
fn accepted(sql: &str) -> bool {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize_with_location()
    else {
        return false;
    };
    let mut all = true;
    for statement in keywords::split_statements(tokens) {
        let accepted = simple::is_simple_select(&keywords::significant(&statement));
        if accepted {
            let full = ast::classify_tokens(statement);
            assert_eq!(full, Some(Verdict::read("select")), "accepted: {sql:?}");
        }
        all &= accepted;
    }
    all
}

#[test]
fn pgbench_and_common_reads_are_accepted() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
        "select abalance from pgbench_accounts where aid = $1",
        "SELECT 1",
        "SELECT $1::int",
        "SELECT * FROM t",
        "SELECT t.* FROM s.t AS t WHERE t.id = $1 AND t.status <> 'gone'",
        "SELECT id, name, \"Value\" FROM users u WHERE u.id IN ($1, $2, 3) ORDER BY name DESC NULLS LAST LIMIT 10 OFFSET $3",
        "SELECT count(*) FROM orders WHERE created_at BETWEEN $1 AND $2",
        "SELECT lower(email) AS e FROM users WHERE email ILIKE $1 OR name NOT LIKE 'x%'",
        "SELECT a.x + b.y * 2 - -1 FROM a JOIN b ON a.id = b.a_id LEFT OUTER JOIN c ON c.id = a.c_id",
        "SELECT DISTINCT kind FROM t WHERE NOT (a IS NULL) AND b IS NOT NULL GROUP BY kind HAVING max(v) > 1",
        "SELECT f(a, g(b)), s.h() FROM t CROSS JOIN u",
        "SELECT first_name || ' ' || last_name FROM people WHERE id = $1 -- trailing comment",
    ] {
        assert!(accepted(sql), "not accepted: {sql:?}");
    }
}

#[test]
fn anything_else_is_left_to_the_parser() {
    for sql in [
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SELECT * INTO t2 FROM t",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM (SELECT 1) s",
        "SELECT * FROM t WHERE a IN (SELECT b FROM u)",
        "SELECT 1 UNION SELECT 2",
        "SELECT * FROM t WHERE",
        "SELECT 1 +",
        "SELECT (1",
        "SELECT",
        "SELECT a b c FROM t",
        "SELECT * FROM t ORDER BY a LIMIT ALL",
        "SELECT date FROM t",
        "SELECT a FROM t AS order",
        "SELECT a FROM t WHERE x = ANY($1)",
        "SELECT CASE WHEN a THEN 1 END FROM t",
        "SELECT ((((((((((1))))))))))",
        "TABLE t",
        "VALUES (1)",
    ] {
        assert!(!accepted(sql), "accepted: {sql:?}");
    }
}

#[test]
fn case_table_agrees_with_the_parser() {
    let accepted_cases = CASES.iter().filter(|(.., sql)| accepted(sql)).count();
    assert!(accepted_cases >= 15, "only {accepted_cases} accepted");
}

/// A small deterministic generator (xorshift64*): no dependency, same cases every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

#[rustfmt::skip]
const IDENTS: &[&str] = &[
    "a", "b", "t", "abalance", "pgbench_accounts", "\"Quoted\"", "\"select\"", "id", "name",
    "key", "value", "data", "status", "type", "version", "x1", "_y",
];
/// Keywords and odd words that must make the recogniser refuse or still parse.
#[rustfmt::skip]
const HOSTILE: &[&str] = &[
    "date", "time", "interval", "user", "current_user", "order", "limit", "case", "exists",
    "array", "row", "values", "table", "lateral", "natural", "window", "filter", "over", "for",
    "into", "with", "union", "select", "from", "where", "left", "join", "on", "using", "all",
    "any", "escape", "collate", "at", "similar", "to", "text", "int", "cast", "default", "only",
    "asc", "nulls", "distinct", "update", "share", "true", "is", "not", "null",
];
#[rustfmt::skip]
const FUNCTIONS: &[&str] = &[
    "f", "count", "sum", "lower", "max", "abs", "now", "pg_catalog.lower", "s.f", "min", "avg",
    "upper", "g", "\"F\"",
];
/// Function-like words outside the grammar.
#[rustfmt::skip]
const ODD_FUNCTIONS: &[&str] = &[
    "coalesce", "nullif", "exists", "cast", "date", "row", "array", "any", "left", "trim",
    "extract", "interval", "filter", "values",
];
#[rustfmt::skip]
const TYPES: &[&str] = &[
    "int", "integer", "bigint", "text", "numeric", "uuid", "boolean", "mytype", "date",
    "timestamp", "interval", "varchar", "json", "jsonb", "\"T\"", "smallint",
];
#[rustfmt::skip]
const LITERALS: &[&str] = &[
    "1", "42", "1.5", "$1", "$2", "'x'", "'it''s'", "NULL", "TRUE", "FALSE", "-1", "$3", "'y'",
    "0", "7",
];
/// Literals outside the grammar (or tokenised unlike the others).
const ODD_LITERALS: &[&str] = &["E'x'", "$$x$$", ".5", "1e3", "B'1'", "X'ff'", "U&'x'"];
#[rustfmt::skip]
const OPERATORS: &[&str] = &[
    "=", "<>", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "||",
];
const ODD_OPERATORS: &[&str] = &["::", "~", "@>", "->", "#", "^", "&", "|", "!", "?", ":="];

fn literal(rng: &mut Rng) -> &'static str {
    if rng.chance(4) {
        rng.pick(ODD_LITERALS)
    } else {
        rng.pick(LITERALS)
    }
}

fn operator(rng: &mut Rng) -> &'static str {
    if rng.chance(4) {
        rng.pick(ODD_OPERATORS)
    } else {
        rng.pick(OPERATORS)
    }
}

fn ident(rng: &mut Rng) -> &'static str {
    if rng.chance(3) {
        rng.pick(HOSTILE)
    } else {
        rng.pick(IDENTS)
    }
}

fn name(rng: &mut Rng, out: &mut Vec<String>) {
    out.push(ident(rng).to_owned());
    while rng.chance(20) {
        out.push(".".into());
        out.push(ident(rng).to_owned());
    }
}

fn expr(rng: &mut Rng, out: &mut Vec<String>, depth: usize) {
    let operand = |rng: &mut Rng, out: &mut Vec<String>| match rng.below(10) {
        0..=2 => out.push(literal(rng).to_owned()),
        3 if depth < 4 => {
            let functions = if rng.chance(5) {
                ODD_FUNCTIONS
            } else {
                FUNCTIONS
            };
            out.push(rng.pick(functions).to_owned());
            out.push("(".into());
            match rng.below(4) {
                0 => out.push("*".into()),
                1 => {}
                _ => {
                    expr(rng, out, depth + 1);
                    while rng.chance(30) {
                        out.push(",".into());
                        expr(rng, out, depth + 1);
                    }
                }
            }
            out.push(")".into());
        }
        4 if depth < 4 => {
            out.push("(".into());
            expr(rng, out, depth + 1);
            out.push(")".into());
        }
        _ => name(rng, out),
    };
    if rng.chance(10) {
        out.push(if rng.chance(50) { "NOT" } else { "-" }.into());
    }
    operand(rng, out);
    if rng.chance(15) {
        out.push("::".into());
        out.push(rng.pick(TYPES).into());
    }
    match rng.below(12) {
        0..=3 => {
            out.push(operator(rng).into());
            operand(rng, out);
        }
        4 => out.extend(["IS", "NOT", "NULL"].map(String::from)),
        5 => {
            out.extend(["IN", "("].map(String::from));
            operand(rng, out);
            out.extend([",".into(), literal(rng).into(), ")".into()]);
        }
        6 => {
            out.push("BETWEEN".into());
            operand(rng, out);
            out.push("AND".into());
            operand(rng, out);
        }
        7 => {
            out.push(rng.pick(&["LIKE", "NOT ILIKE"]).into());
            out.push("'a%'".into());
        }
        8 if depth < 4 => {
            out.push(rng.pick(&["AND", "OR"]).into());
            expr(rng, out, depth + 1);
        }
        _ => {}
    }
}

fn select(rng: &mut Rng) -> Vec<String> {
    let mut out = vec!["SELECT".to_owned()];
    if rng.chance(10) {
        out.push("DISTINCT".into());
    }
    for i in 0..=rng.below(3) {
        if i > 0 {
            out.push(",".into());
        }
        if rng.chance(15) {
            out.push("*".into());
            continue;
        }
        expr(rng, &mut out, 0);
        if rng.chance(25) {
            if rng.chance(50) {
                out.push("AS".into());
            }
            out.push(ident(rng).into());
        }
    }
    if rng.chance(85) {
        out.push("FROM".into());
        name(rng, &mut out);
        if rng.chance(30) {
            out.push(ident(rng).into());
        }
        while rng.chance(25) {
            out.push(
                rng.pick(&["JOIN", "LEFT JOIN", "INNER JOIN", "FULL OUTER JOIN"])
                    .into(),
            );
            name(rng, &mut out);
            out.push("ON".into());
            expr(rng, &mut out, 2);
        }
    }
    for (clause, percent) in [
        ("WHERE", 70),
        ("GROUP BY", 10),
        ("HAVING", 5),
        ("ORDER BY", 25),
    ] {
        if rng.chance(percent) {
            out.push(clause.into());
            expr(rng, &mut out, 0);
            if clause == "ORDER BY" && rng.chance(50) {
                out.push(rng.pick(&["ASC", "DESC", "DESC NULLS FIRST"]).into());
            }
        }
    }
    for clause in ["LIMIT", "OFFSET"] {
        if rng.chance(20) {
            out.extend([
                clause.into(),
                rng.pick(&["10", "$1", "$2", "5", "ALL"]).into(),
            ]);
        }
    }
    out
}

/// Deletes, duplicates, swaps or replaces one token.
fn mutate(rng: &mut Rng, tokens: &mut Vec<String>) {
    let i = rng.below(tokens.len());
    match rng.below(4) {
        0 => {
            tokens.remove(i);
        }
        1 => tokens.insert(i, tokens[i].clone()),
        2 if i + 1 < tokens.len() => tokens.swap(i, i + 1),
        _ => {
            let pool = [
                HOSTILE,
                ODD_OPERATORS,
                ODD_LITERALS,
                OPERATORS,
                LITERALS,
                &["(", ")", ",", ".", "*", ";"],
            ];
            let kind = pool[rng.below(pool.len())];
            tokens[i] = rng.pick(kind).to_owned();
        }
    }
}

#[test]
fn generated_statements_agree_with_the_parser() {
    const ROUNDS: usize = 5000;
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let (mut plain, mut mutated) = (0, 0);
    for _ in 0..ROUNDS {
        let mut tokens = select(&mut rng);
        plain += usize::from(accepted(&tokens.join(" ")));
        for _ in 0..2 {
            mutate(&mut rng, &mut tokens);
            mutated += usize::from(accepted(&tokens.join(" ")));
        }
    }
    // Enough of both kinds are accepted for the check not to be vacuous.
    assert!(plain * 4 > ROUNDS, "only {plain} of {ROUNDS} accepted");
    assert!(
        mutated > 100,
        "only {mutated} of {} mutants accepted",
        2 * ROUNDS
    );
}

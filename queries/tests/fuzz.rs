//! Property test of validation: random SQL from a grammar of the node tables, plus random
//! mutations of it, never panics the validator, and whatever it accepts splits into a site
//! plan and whose barrier never groups by pid.

use crate::common;
use ern_queries::catalog::planning_state;

use common::{site_plan, validate};

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
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
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const COLUMNS: &[&str] = &[
    "p.pid",
    "p.birth_year",
    "p.birth_month",
    "p.sex",
    "p.vital_status",
    "p.undiagnosed",
    "p.death_date",
    "d.pid",
    "d.code",
    "d.code_system",
    "d.status",
    "d.age_at_onset",
    "d.age_at_diagnosis",
    "d.diagnosis_date",
];
const FUNCTIONS: &[&str] = &[
    "abs",
    "lower",
    "upper",
    "length",
    "coalesce",
    "repeat",
    "md5",
    "sqrt",
    "substr",
    "date_part",
    "regexp_like",
    "nullif",
    "round",
];
const AGGREGATES: &[&str] = &[
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "median",
    "array_agg",
    "string_agg",
    "stddev",
    "bool_or",
];
const OPERATORS: &[&str] = &[
    "+", "-", "*", "/", "%", "=", "<>", "<", ">=", "AND", "OR", "||", "LIKE", "~",
];
const LITERALS: &[&str] = &[
    "1",
    "0",
    "1934",
    "'female'",
    "'ORPHA:154'",
    "NULL",
    "2.5",
    "TRUE",
    "'x'",
    "DATE '2020-01-01'",
];

fn expr(rng: &mut Rng, depth: usize) -> String {
    match if depth > 2 {
        rng.below(2)
    } else {
        rng.below(8)
    } {
        0 => rng.pick(COLUMNS).to_string(),
        1 => rng.pick(LITERALS).to_string(),
        2 | 3 => format!(
            "({} {} {})",
            expr(rng, depth + 1),
            rng.pick(OPERATORS),
            expr(rng, depth + 1)
        ),
        4 => format!("{}({})", rng.pick(FUNCTIONS), expr(rng, depth + 1)),
        5 => format!(
            "CASE WHEN {} THEN {} ELSE {} END",
            expr(rng, depth + 1),
            expr(rng, depth + 1),
            expr(rng, depth + 1)
        ),
        6 => format!(
            "CAST({} AS {})",
            expr(rng, depth + 1),
            ["INT", "VARCHAR", "DOUBLE", "DATE"][rng.below(4)]
        ),
        _ => format!("{} IN (SELECT pid FROM diagnosis)", expr(rng, depth + 1)),
    }
}

fn aggregate(rng: &mut Rng) -> String {
    let distinct = if rng.below(4) == 0 { "DISTINCT " } else { "" };
    let argument = if rng.below(3) == 0 {
        "*".to_string()
    } else {
        expr(rng, 1)
    };
    let filter = if rng.below(8) == 0 {
        format!(" FILTER (WHERE {})", expr(rng, 2))
    } else {
        String::new()
    };
    format!("{}({distinct}{argument}){filter}", rng.pick(AGGREGATES))
}

fn query(rng: &mut Rng) -> String {
    let groups: Vec<String> = (0..rng.below(3)).map(|_| expr(rng, 1)).collect();
    let mut select: Vec<String> = groups.clone();
    select.extend((0..1 + rng.below(3)).map(|_| aggregate(rng)));
    let from = match rng.below(4) {
        0 => "patient p JOIN diagnosis d ON p.pid = d.pid".to_string(),
        1 => "patient p, diagnosis d".to_string(),
        2 => "patient p JOIN (SELECT pid, code, code_system, status, age_at_onset, age_at_diagnosis, diagnosis_date FROM diagnosis) d ON p.pid = d.pid".to_string(),
        _ => format!("patient p JOIN diagnosis d ON {}", expr(rng, 2)),
    };
    let mut sql = format!("SELECT {} FROM {from}", select.join(", "));
    if rng.below(2) == 0 {
        sql.push_str(&format!(" WHERE {}", expr(rng, 0)));
    }
    if !groups.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", groups.join(", ")));
    }
    if rng.below(4) == 0 {
        sql.push_str(&format!(" HAVING {}", aggregate(rng)));
        sql.push_str(" > 3");
    }
    if rng.below(4) == 0 {
        sql.push_str(" ORDER BY 1 LIMIT 5");
    }
    sql
}

/// A query from the safe part of the grammar, so the property also covers accepted SQL.
fn tame_query(rng: &mut Rng) -> String {
    const GROUPS: &[&str] = &[
        "p.sex",
        "d.code",
        "p.birth_year / 10",
        "d.code_system",
        "lower(d.status)",
        "p.vital_status",
    ];
    const AGGS: &[&str] = &[
        "COUNT(*)",
        "COUNT(DISTINCT p.pid)",
        "SUM(p.birth_year)",
        "AVG(d.age_at_onset)",
        "COUNT(d.code)",
    ];
    const FILTERS: &[&str] = &[
        "p.birth_year > 1950",
        "d.code LIKE 'ORPHA:%'",
        "p.sex = 'female' OR p.undiagnosed",
        "d.age_at_onset IS NOT NULL",
    ];
    let groups: Vec<&str> = (0..rng.below(3)).map(|_| rng.pick(GROUPS)).collect();
    let mut select: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    select.extend((0..1 + rng.below(3)).map(|_| rng.pick(AGGS).to_string()));
    let mut sql = format!(
        "SELECT {} FROM patient p JOIN diagnosis d ON p.pid = d.pid",
        select.join(", ")
    );
    if rng.below(2) == 0 {
        sql.push_str(&format!(" WHERE {}", rng.pick(FILTERS)));
    }
    if !groups.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", groups.join(", ")));
    }
    sql
}

/// Cuts, duplicates or swaps a random span, to reach malformed SQL too.
fn mutate(rng: &mut Rng, sql: &str) -> String {
    let chars: Vec<char> = sql.chars().collect();
    if chars.len() < 4 {
        return sql.to_string();
    }
    let (a, b) = (rng.below(chars.len()), rng.below(chars.len()));
    let (start, end) = (a.min(b), a.max(b));
    match rng.below(3) {
        0 => chars[..start].iter().chain(&chars[end..]).collect(),
        1 => chars[..end].iter().chain(&chars[start..]).collect(),
        _ => chars[end..].iter().chain(&chars[..start]).collect(),
    }
}

#[tokio::test]
async fn random_sql_never_panics_and_accepted_sql_always_splits() {
    let state = planning_state().expect("planning state");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..1500 {
        let sql = if rng.below(3) == 0 {
            tame_query(&mut rng)
        } else {
            query(&mut rng)
        };
        for candidate in [sql.clone(), mutate(&mut rng, &sql)] {
            match validate(&candidate, &state).await {
                Ok(query) => {
                    accepted += 1;
                    let plan = site_plan(
                        &query,
                        &ern_queries::SiteFacts::with_unique_pid_tables(["patient"]),
                    )
                    .unwrap_or_else(|e| panic!("{candidate}: {e}"));
                    let shown = plan.display_indent().to_string();
                    assert!(
                        !query
                            .barrier()
                            .group_exprs
                            .iter()
                            .any(|g| g.to_string().ends_with(".pid")),
                        "{candidate}\n{shown}"
                    );
                }
                Err(refusal) => {
                    refused += 1;
                    assert!(!refusal.reason.is_empty(), "{candidate}");
                }
            }
        }
    }
    assert!(
        accepted > 20,
        "the grammar should reach valid queries too ({accepted} accepted)"
    );
    assert!(refused > 500, "{refused} refused");
}

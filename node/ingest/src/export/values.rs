//! Parsers for the value formats of the interchange format (data-model.md section 1).
//!
//! Each parser is strict (it accepts exactly the written format, nothing "close enough")
//! and allocation-free, because ingest runs it on every cell of a million-patient export.
//! A refusal is a static rule text that never repeats the offending value.

use std::ops::RangeInclusive;

/// The years a date may lie in (data-model.md section 1, "Declared ranges": every year
/// 1880–2100; "a date outside 1880-01-01 … 2100-12-31 is refused with its line"). The
/// same range bounds `birth_year` in `ern_queries::schema::declared_range`, which secure
/// aggregation's domains and the clamp on sums rely on.
pub const YEARS: RangeInclusive<i32> = 1880..=2100;

/// The ages, in whole years, a stored age may take (data-model.md: "ages 0–150"; the
/// declared range of `age_at_onset` and `age_at_diagnosis` in `ern_queries::schema`).
pub const AGES: RangeInclusive<i32> = 0..=150;

/// A calendar date checked for existence (leap years included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Four-digit year.
    pub year: i32,
    /// Month, 1-12.
    pub month: u32,
    /// Day of the month, 1-31.
    pub day: u32,
}

impl Date {
    /// Days since 1970-01-01, the Arrow `Date32` representation.
    pub fn days_since_epoch(self) -> i32 {
        // Howard Hinnant's days_from_civil, exact for the proleptic Gregorian calendar.
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        i32::try_from(days).unwrap_or(i32::MAX)
    }

    /// The date `days` after 1970-01-01 (negative: before it).
    pub fn from_days_since_epoch(days: i32) -> Date {
        // Howard Hinnant's civil_from_days.
        let z = i64::from(days) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }

    /// Whole years from a birth year (and month, when known) to this date:
    /// `year - birth_year`, minus one when the birth month is known and not yet reached.
    /// Unbounded: negative for a date before the birth (see [`Date::declared_age_from`]).
    pub fn age_from(self, birth_year: i32, birth_month: Option<u32>) -> i32 {
        let before_birthday = birth_month.is_some_and(|month| self.month < month);
        self.year - birth_year - i32::from(before_birthday)
    }

    /// The age as the store keeps it: [`Date::age_from`] clamped into the declared range
    /// [`AGES`] (data-model.md: "Declared ranges (they bound group domains and clamp
    /// sums): … ages 0–150").
    ///
    /// A date before the birth is a prenatal date (a diagnosis made before birth, an
    /// onset dated in pregnancy), not a data error: the data model refuses only dates
    /// outside 1880-01-01 … 2100-12-31 and stores an `antenatal` onset as age 0, so such
    /// a date is age 0 too, and its row is kept. An age stored outside the range would
    /// fall outside every domain proved from it and vanish from secure totals (red team:
    /// five diagnoses at age -1 were missing from the network answer).
    pub fn declared_age_from(self, birth_year: i32, birth_month: Option<u32>) -> i32 {
        self.age_from(birth_year, birth_month)
            .clamp(*AGES.start(), *AGES.end())
    }

    /// True when the date lies in 1880-01-01 … 2100-12-31 ([`YEARS`]).
    pub fn in_declared_range(self) -> bool {
        YEARS.contains(&self.year)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A birth date as exported: year, year and month, or a full date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialDate {
    /// Four-digit year.
    pub year: i32,
    /// Month, when given.
    pub month: Option<u32>,
}

impl PartialDate {
    /// True when the date, at whatever precision, lies in 1880-01-01 … 2100-12-31
    /// ([`YEARS`]): the range holds whole years, so the year decides.
    pub fn in_declared_range(self) -> bool {
        YEARS.contains(&self.year)
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0, |n, b| n * 10 + u32::from(b - b'0')))
}

fn year(bytes: &[u8]) -> Option<i32> {
    let y = digits(bytes.get(..4)?)?;
    // Year 0000 is not a calendar year anyone was born in.
    (y >= 1).then(|| i32::try_from(y).ok()).flatten()
}

fn month(bytes: &[u8]) -> Option<u32> {
    digits(bytes).filter(|m| (1..=12).contains(m))
}

/// Rule text for `YYYY-MM-DD` dates.
pub const DATE_RULE: &str = "must be a calendar date written YYYY-MM-DD";

/// Rule text for birth dates.
pub const PARTIAL_DATE_RULE: &str = "must be a calendar date written YYYY-MM-DD, YYYY-MM or YYYY";

/// Rule text for a well-formed date outside the declared range ([`YEARS`]).
pub const DATE_RANGE_RULE: &str =
    "must lie between 1880-01-01 and 2100-12-31 (the data model's declared range of dates)";

/// Parses `YYYY-MM-DD`, checking that the day exists.
pub fn parse_date(text: &str) -> Option<Date> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = year(&b[..4])?;
    let month = month(&b[5..7])?;
    let day = digits(&b[8..10]).filter(|d| (1..=days_in_month(year, month)).contains(d))?;
    Some(Date { year, month, day })
}

/// Parses `YYYY-MM-DD`, `YYYY-MM` or `YYYY`.
pub fn parse_partial_date(text: &str) -> Option<PartialDate> {
    let b = text.as_bytes();
    match b.len() {
        4 => Some(PartialDate {
            year: year(b)?,
            month: None,
        }),
        7 if b[4] == b'-' => Some(PartialDate {
            year: year(&b[..4])?,
            month: Some(month(&b[5..7])?),
        }),
        10 => parse_date(text).map(|d| PartialDate {
            year: d.year,
            month: Some(d.month),
        }),
        _ => None,
    }
}

/// Rule text for local ids.
pub const LOCAL_ID_RULE: &str = "must be 1-64 printable characters";

/// True for a local id: 1 to 64 characters, none of them a control character.
pub fn is_local_id(text: &str) -> bool {
    let mut count = 0usize;
    for c in text.chars() {
        if c.is_control() {
            return false;
        }
        count += 1;
        if count > 64 {
            return false;
        }
    }
    count >= 1
}

/// Rule text for free text (gene symbols, HGVS strings).
pub const TEXT_RULE: &str = "must be printable text without control characters";

/// True for free text without control characters.
pub fn is_printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// Rule text for `true`/`false` cells.
pub const BOOLEAN_RULE: &str = "must be true or false";

/// Parses `true` or `false`, exactly.
pub fn parse_boolean(text: &str) -> Option<bool> {
    match text {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The coding system of a diagnosis code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSystem {
    /// Orphanet, `ORPHA:<digits>`.
    Orpha,
    /// ICD-10, `ICD10:<code>`.
    Icd10,
    /// OMIM, `OMIM:<6 digits>`.
    Omim,
}

impl CodeSystem {
    /// The `code_system` value stored in the diagnosis table.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeSystem::Orpha => "ORPHA",
            CodeSystem::Icd10 => "ICD10",
            CodeSystem::Omim => "OMIM",
        }
    }
}

/// Rule text for diagnosis codes.
pub const CODE_RULE: &str =
    "must be ORPHA:<digits>, ICD10:<code> (e.g. ICD10:Q87.4) or OMIM:<6 digits>";

/// An ICD-10 code: a letter, two digits, optionally a dot and one to four letters or digits.
fn is_icd10(code: &[u8]) -> bool {
    let rest = match code {
        [letter, d1, d2, rest @ ..]
            if letter.is_ascii_uppercase() && d1.is_ascii_digit() && d2.is_ascii_digit() =>
        {
            rest
        }
        _ => return false,
    };
    match rest {
        [] => true,
        [b'.', sub @ ..] => {
            (1..=4).contains(&sub.len())
                && sub
                    .iter()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        }
        _ => false,
    }
}

/// Parses a diagnosis code and returns its coding system.
pub fn parse_code(text: &str) -> Option<CodeSystem> {
    if let Some(rest) = text.strip_prefix("ORPHA:") {
        (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())).then_some(CodeSystem::Orpha)
    } else if let Some(rest) = text.strip_prefix("ICD10:") {
        is_icd10(rest.as_bytes()).then_some(CodeSystem::Icd10)
    } else if let Some(rest) = text.strip_prefix("OMIM:") {
        (rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_digit())).then_some(CodeSystem::Omim)
    } else {
        None
    }
}

/// Rule text for HGNC ids.
pub const HGNC_RULE: &str = "must be HGNC:<digits>";

/// True for `HGNC:<digits>`.
pub fn is_hgnc_id(text: &str) -> bool {
    text.strip_prefix("HGNC:")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// Rule text for HPO ids.
pub const HPO_RULE: &str = "must be HP: followed by 7 digits";

/// True for `HP:` followed by exactly seven digits.
pub fn is_hpo_id(text: &str) -> bool {
    text.strip_prefix("HP:")
        .is_some_and(|rest| rest.len() == 7 && rest.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_checked_against_the_calendar() {
        assert!(parse_date("2020-02-29").is_some());
        assert!(parse_date("2019-02-29").is_none());
        assert!(parse_date("1900-02-29").is_none());
        assert!(parse_date("2000-02-29").is_some());
        assert!(parse_date("2021-04-31").is_none());
        assert!(parse_date("2021-13-01").is_none());
        assert!(parse_date("2021-1-01").is_none());
        assert!(parse_date("2021/01/01").is_none());
        assert!(parse_date("0000-01-01").is_none());
        assert!(parse_date(" 2021-01-01").is_none());
    }

    #[test]
    fn days_since_epoch_matches_known_values() {
        let day = |s| parse_date(s).map(Date::days_since_epoch);
        assert_eq!(day("1970-01-01"), Some(0));
        assert_eq!(day("1969-12-31"), Some(-1));
        assert_eq!(day("2000-03-01"), Some(11_017));
        assert_eq!(day("2024-02-29"), Some(19_782));
        assert_eq!(day("1900-01-01"), Some(-25_567));
        for days in [-40_000, -1, 0, 59, 11_016, 19_782, 30_000] {
            let date = Date::from_days_since_epoch(days);
            assert_eq!(date.days_since_epoch(), days);
            assert_eq!(parse_date(&date.to_string()), Some(date));
        }
    }

    #[test]
    fn partial_dates_keep_year_and_month() {
        assert_eq!(
            parse_partial_date("1984"),
            Some(PartialDate {
                year: 1984,
                month: None
            })
        );
        assert_eq!(
            parse_partial_date("1984-07"),
            Some(PartialDate {
                year: 1984,
                month: Some(7)
            })
        );
        assert_eq!(
            parse_partial_date("1984-07-31"),
            Some(PartialDate {
                year: 1984,
                month: Some(7)
            })
        );
        assert_eq!(parse_partial_date("1984-00"), None);
        assert_eq!(parse_partial_date("84"), None);
        assert_eq!(parse_partial_date("1984-07-32"), None);
    }

    #[test]
    fn age_counts_whole_years() {
        let d = Date {
            year: 2020,
            month: 6,
            day: 15,
        };
        assert_eq!(d.age_from(2000, None), 20);
        assert_eq!(d.age_from(2000, Some(6)), 20);
        assert_eq!(d.age_from(2000, Some(7)), 19);
    }

    #[test]
    fn ages_are_clamped_into_the_declared_range() {
        let d = |text| parse_date(text).expect("a date");
        // Born 2020-03: a diagnosis in 2019-12 is prenatal, age 0 (-1 unclamped).
        assert_eq!(d("2019-12-01").age_from(2020, Some(3)), -1);
        assert_eq!(d("2019-12-01").declared_age_from(2020, Some(3)), 0);
        assert_eq!(d("2020-03-01").declared_age_from(2020, Some(3)), 0);
        assert_eq!(d("2021-02-28").declared_age_from(2020, Some(3)), 0);
        assert_eq!(d("2021-03-01").declared_age_from(2020, Some(3)), 1);
        assert_eq!(d("2100-12-31").declared_age_from(1880, None), 150);
        assert_eq!(d("2030-06-01").declared_age_from(1880, Some(7)), 149);
    }

    #[test]
    fn the_declared_ranges_are_the_query_schemas() {
        use ern_queries::schema::declared_range;
        let years = declared_range("birth_year").expect("birth_year");
        assert_eq!((i64::from(*YEARS.start()), i64::from(*YEARS.end())), years);
        for column in ["age_at_onset", "age_at_diagnosis"] {
            let ages = declared_range(column).expect(column);
            assert_eq!((i64::from(*AGES.start()), i64::from(*AGES.end())), ages);
        }
        let first = Date {
            year: 1880,
            month: 1,
            day: 1,
        };
        let last = Date {
            year: 2100,
            month: 12,
            day: 31,
        };
        assert!(first.in_declared_range() && last.in_declared_range());
        assert!(!parse_date("1879-12-31").expect("date").in_declared_range());
        assert!(!parse_date("2101-01-01").expect("date").in_declared_range());
        for (text, inside) in [
            ("1880", true),
            ("2100-12", true),
            ("1879", false),
            ("0001-01-01", false),
            ("9999-12", false),
            ("2101", false),
        ] {
            let date = parse_partial_date(text).expect("a partial date");
            assert_eq!(date.in_declared_range(), inside, "{text}");
        }
    }

    #[test]
    fn codes_follow_their_systems() {
        assert_eq!(parse_code("ORPHA:558"), Some(CodeSystem::Orpha));
        assert_eq!(parse_code("ICD10:Q87.4"), Some(CodeSystem::Icd10));
        assert_eq!(parse_code("ICD10:I42"), Some(CodeSystem::Icd10));
        assert_eq!(parse_code("OMIM:192600"), Some(CodeSystem::Omim));
        for bad in [
            "ORPHA:",
            "ORPHA:12a",
            "orpha:558",
            "ICD10:q87.4",
            "ICD10:Q8",
            "ICD10:Q87.",
            "OMIM:19260",
            "HP:0001639",
            "558",
        ] {
            assert_eq!(parse_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_follow_their_formats() {
        assert!(is_hgnc_id("HGNC:7577"));
        assert!(!is_hgnc_id("HGNC:"));
        assert!(!is_hgnc_id("MYH7"));
        assert!(is_hpo_id("HP:0001639"));
        assert!(!is_hpo_id("HP:001639"));
        assert!(is_local_id("GH-000123"));
        assert!(!is_local_id(""));
        assert!(!is_local_id("a\tb"));
        assert!(is_local_id(&"x".repeat(64)));
        assert!(!is_local_id(&"x".repeat(65)));
    }
}

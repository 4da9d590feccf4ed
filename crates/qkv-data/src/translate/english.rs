//! English for the translation tasks: number words, ordinal days, month names.

pub(super) const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
pub(super) const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
pub(super) const ORDINALS: [&str; 20] = [
    "",
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
];
pub(super) const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Days in `month` (1–12) of `year`, leap years included.
pub(super) fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `0..=999_999` in English words, British style: 342 → "three hundred and forty-two".
pub fn number_words(n: u64) -> String {
    assert!(n < 1_000_000, "number_words covers 0..=999999, not {n}");
    fn below_hundred(n: u64) -> String {
        match n {
            0..=19 => ONES[n as usize].to_string(),
            _ if n.is_multiple_of(10) => TENS[(n / 10) as usize].to_string(),
            _ => format!("{}-{}", TENS[(n / 10) as usize], ONES[(n % 10) as usize]),
        }
    }
    fn below_thousand(n: u64) -> String {
        match (n / 100, n % 100) {
            (0, rest) => below_hundred(rest),
            (h, 0) => format!("{} hundred", ONES[h as usize]),
            (h, rest) => format!("{} hundred and {}", ONES[h as usize], below_hundred(rest)),
        }
    }
    match (n / 1000, n % 1000) {
        (0, rest) => below_thousand(rest),
        (t, 0) => format!("{} thousand", below_thousand(t)),
        (t, rest) if rest < 100 => {
            format!("{} thousand and {}", below_thousand(t), below_hundred(rest))
        }
        (t, rest) => format!("{} thousand {}", below_thousand(t), below_thousand(rest)),
    }
}

/// Day of the month as an ordinal in words: 7 → "seventh", 23 → "twenty-third".
pub fn ordinal_words(day: u64) -> String {
    match day {
        1..=19 => ORDINALS[day as usize].to_string(),
        20 => "twentieth".into(),
        30 => "thirtieth".into(),
        21..=29 => format!("twenty-{}", ORDINALS[(day - 20) as usize]),
        31 => "thirty-first".into(),
        _ => panic!("no day {day} in a month"),
    }
}

//! Counts in plain words for the text people read: `1 row`, `2 rows`, `1 change-log entry`.

/// `n` and the noun, singular for exactly one: `count(1, "row")` is `1 row`, `count(3, "row")`
/// is `3 rows`. Nouns ending in a consonant and `y` take `ies` (`entry` → `entries`), those
/// ending in `s`, `x`, `ch` or `sh` take `es`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {}", plural(noun))
    }
}

/// The plural of an English noun as tidemark uses them.
pub fn plural(noun: &str) -> String {
    let consonant_y = noun.ends_with('y')
        && !noun.ends_with("ay")
        && !noun.ends_with("ey")
        && !noun.ends_with("oy");
    if consonant_y {
        format!("{}ies", &noun[..noun.len() - 1])
    } else if ["s", "x", "ch", "sh"].iter().any(|e| noun.ends_with(e)) {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_as_words() {
        assert_eq!(count(1u64, "row"), "1 row");
        assert_eq!(count(0u64, "row"), "0 rows");
        assert_eq!(count(2u64, "row"), "2 rows");
        assert_eq!(count(1u64, "change-log entry"), "1 change-log entry");
        assert_eq!(count(5u64, "change-log entry"), "5 change-log entries");
        assert_eq!(count(2u64, "delay"), "2 delays");
        assert_eq!(count(3u64, "batch"), "3 batches");
        assert_eq!(count(4u64, "soft delete"), "4 soft deletes");
    }
}

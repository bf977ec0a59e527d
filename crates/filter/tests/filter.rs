//! The SQL92 subset and tag expressions, as a subscriber would write them.

use raftmq_filter::{Filter, Kind};

fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Whether `sql` matches a message with tag `tags` and these properties.
fn sql(expression: &str, tags: &str, pairs: &[(&str, &str)]) -> bool {
    Filter::sql(expression)
        .unwrap_or_else(|e| panic!("{expression:?} refused: {e}"))
        .matches(tags, &props(pairs))
}

#[test]
fn comparisons_read_property_strings_as_numbers() {
    let m = [("a", "5"), ("b", "2.5"), ("name", "alice")];
    assert!(sql("a = 5", "", &m));
    assert!(sql("a > 4 AND a < 6", "", &m));
    assert!(sql("a >= 5 AND a <= 5", "", &m));
    assert!(!sql("a <> 5", "", &m));
    assert!(sql("b < 3", "", &m));
    assert!(sql("b > -1", "", &m));
    assert!(sql("a > b", "", &m));
    assert!(sql("a = 5.0", "", &m));
    assert!(sql("name = 'alice'", "", &m));
    assert!(sql("name <> 'bob'", "", &m));
    assert!(!sql("name = 'Alice'", "", &m), "strings compare case-sensitively");
    assert!(sql("a BETWEEN 1 AND 5", "", &m));
    assert!(!sql("a BETWEEN 6 AND 9", "", &m));
    assert!(sql("a NOT BETWEEN 6 AND 9", "", &m));
    assert!(sql("name IN ('bob', 'alice')", "", &m));
    assert!(!sql("name NOT IN ('bob', 'alice')", "", &m));
    assert!(sql("a IN (1, 5)", "", &m));
    assert!(sql("(a = 1 OR a = 5) AND NOT (name = 'bob')", "", &m));
    assert!(sql("TRUE", "", &m));
    assert!(!sql("FALSE", "", &m));
    assert!(sql("a = 5 and name = 'alice'", "", &m), "keywords in any case");
}

#[test]
fn tags_is_the_message_tag() {
    assert!(sql("TAGS = 'TagA'", "TagA", &[]));
    assert!(sql("TAGS IN ('TagA', 'TagB')", "TagB", &[]));
    assert!(!sql("TAGS = 'TagA'", "TagC", &[]));
    assert!(sql("TAGS IS NULL", "", &[]), "a message without a tag");
}

#[test]
fn missing_properties_are_null_and_never_match_a_comparison() {
    let m = [("a", "1")];
    assert!(sql("b IS NULL", "", &m));
    assert!(!sql("b IS NOT NULL", "", &m));
    assert!(sql("a IS NOT NULL", "", &m));
    assert!(!sql("b = 1", "", &m));
    assert!(!sql("b <> 1", "", &m));
    assert!(!sql("NOT (b = 1)", "", &m), "NOT of unknown is unknown");
    assert!(!sql("b BETWEEN 0 AND 9", "", &m));
    assert!(!sql("b NOT IN ('x')", "", &m));
    assert!(sql("b = 1 OR a = 1", "", &m), "unknown OR true is true");
    assert!(!sql("b = 1 AND a = 1", "", &m));
    assert!(!sql("a = NULL", "", &m));
}

#[test]
fn a_property_that_is_not_a_number_skips_the_message() {
    // RocketMQ's behaviour: the message does not match, the expression stays valid.
    let m = [("a", "abc"), ("n", "3")];
    assert!(!sql("a > 1", "", &m));
    assert!(!sql("a = 1", "", &m));
    assert!(
        !sql("NOT (a > 1)", "", &m),
        "a failed comparison is not turned into a match by NOT"
    );
    assert!(!sql("a > 1 OR n = 3", "", &m), "the whole message is skipped");
    assert!(sql("n = 3", "", &m));
}

#[test]
fn booleans_compare_with_true_and_false_properties() {
    let m = [("vip", "true"), ("old", "FALSE"), ("x", "maybe")];
    assert!(sql("vip = TRUE", "", &m));
    assert!(sql("old = FALSE", "", &m));
    assert!(sql("vip AND NOT old", "", &m));
    assert!(sql("vip IS TRUE", "", &m));
    assert!(!sql("x = TRUE", "", &m));
    assert!(!sql("x", "", &m));
}

#[test]
fn large_integers_compare_exactly() {
    let m = [("id", "9007199254740993")];
    assert!(sql("id = 9007199254740993", "", &m));
    assert!(!sql("id = 9007199254740992", "", &m));
}

/// The error for `expression`, as the subscriber sees it.
fn refused(expression: &str) -> raftmq_filter::FilterError {
    match Filter::sql(expression) {
        Ok(_) => panic!("{expression:?} was accepted"),
        Err(e) => e,
    }
}

#[test]
fn bad_expressions_are_refused_with_their_position() {
    let e = refused("a > ");
    assert_eq!(e.line, 1, "{e}");
    assert!(e.reason.contains("Expected"), "{e}");

    let e = refused("a = 1 b");
    assert_eq!((e.line, e.column), (1, 7), "{e}");
    assert!(e.to_string().starts_with("line 1, column 7: unexpected `b`"), "{e}");

    let e = refused("a > 'x'");
    assert_eq!((e.line, e.column), (1, 5), "{e}");
    assert!(e.reason.contains("only numbers can be ordered"), "{e}");

    let e = refused("name = 1 AND x = 'a' AND 'a' = 2");
    assert!(e.reason.contains("compares a string with a number"), "{e}");
    assert_eq!(e.column, 26, "{e}");

    let e = refused("a + 1 > 2");
    assert!(e.reason.contains("not supported"), "{e}");
    assert_eq!(e.column, 1, "{e}");

    let e = refused("upper(a) = 'X'");
    assert!(e.reason.contains("not supported"), "{e}");

    let e = refused("'abc'");
    assert!(e.reason.contains("not a condition"), "{e}");

    let e = refused("a IN (b)");
    assert!(e.reason.contains("literals only"), "{e}");

    let e = refused("(a = 1) = TRUE");
    assert!(e.reason.contains("cannot be compared"), "{e}");

    let e = refused("   ");
    assert_eq!(e.line, 0);
    assert!(e.reason.contains("empty"), "{e}");

    let e = refused(&"(".repeat(200));
    assert!(e.reason.contains("deeper"), "{e}");

    let e = refused(&format!("a = '{}'", "x".repeat(9000)));
    assert!(e.reason.contains("at most"), "{e}");

    let e = refused("a = 'unterminated");
    assert_eq!(e.line, 1, "{e}");
}

#[test]
fn tag_expressions() {
    let all = Filter::parse(Kind::Tag, "*").unwrap();
    assert!(all.is_all() && all.matches("x", &[]));
    assert!(Filter::tags("").unwrap().is_all());
    let ab = Filter::tags("TagA || TagB").unwrap();
    assert!(ab.matches_tags("TagA") && ab.matches_tags("TagB") && !ab.matches_tags("TagC"));
    assert!(!ab.is_sql());
    assert!(Filter::tags("a || ").is_err());
    let sql = Filter::parse(Kind::Sql, "a = 1").unwrap();
    assert!(sql.is_sql() && sql.matches_tags("anything"));
}

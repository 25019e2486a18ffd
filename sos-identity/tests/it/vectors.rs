//! The test vectors of `docs/identity.md`, read from the document itself.

use sos_identity::{AgentName, IdentityVector};

fn section(begin: &str, end: &str) -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/identity.md"))
        .expect("docs/identity.md is readable");
    let start = doc.find(begin).expect("begin marker") + begin.len();
    let stop = doc.find(end).expect("end marker");
    doc[start..stop]
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| name") && !line.starts_with("| input"))
        .map(|line| line.trim_matches('|').split(" | ").map(|cell| cell.trim().to_owned()).collect())
        .collect()
}

fn json_string(cell: &str) -> String {
    serde_json::from_str(cell).unwrap_or_else(|error| panic!("{cell} is not a JSON string: {error}"))
}

#[test]
fn documented_vectors_match() {
    let rows = section("<!-- vectors:begin -->", "<!-- vectors:end -->");
    assert!(rows.len() >= 5, "at least 5 vectors, found {}", rows.len());
    for row in rows {
        let [name, role, hex, u0, p0, r15] = row.as_slice() else { panic!("malformed row {row:?}") };
        let vector = IdentityVector::derive(&json_string(name), &json_string(role)).expect("valid input");
        assert_eq!(&vector.to_hex(), hex, "{name} {role}");
        assert_eq!(vector.u()[0].to_string(), *u0);
        assert_eq!(f64::from(vector.p()[0]), p0.parse::<f64>().expect("p0 is a number"));
        assert_eq!(vector.r()[15].to_string(), *r15);
    }
}

#[test]
fn documented_rejections_are_rejected() {
    let rows = section("<!-- rejects:begin -->", "<!-- rejects:end -->");
    assert!(rows.len() >= 3);
    for row in rows {
        let input = json_string(&row[0]);
        let error = AgentName::new(input.as_str()).expect_err(&row[0]);
        assert!(error.to_string().contains(&row[1]), "{error} should say {:?}", row[1]);
    }
}

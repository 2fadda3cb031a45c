//! Which kind of document a question asks for, from its wording: "what's the procedure?" asks
//! for an SOP, "has this happened before?" for incident reports, "what did we offer?" for a
//! proposal. Hybrid search fuses this as one more ranking in which every document of an asked
//! kind ranks first ([`super::index::Index::search`]), so a question that names a plant and a
//! failure mode no longer gets that plant's incident reports above the procedure it asked for.
//!
//! Only the question's own words count (never a document, so no hidden row can move it), and it
//! is a preference, not a filter: a caller who wants a filter passes `kinds`.

/// Word sequences that ask for a kind of document, in lower case, whole words.
const CUES: [(&str, &[&[&str]]); 4] = [
    (
        "sop",
        &[
            &["procedure"],
            &["procedures"],
            &["sop"],
            &["instructions"],
            &["steps"],
            &["checklist"],
            &["troubleshoot"],
            &["fix"],
            &["how", "to"],
            &["how", "do", "we"],
            &["how", "do", "i"],
            &["how", "should"],
            &["what", "should"],
        ],
    ),
    (
        "incident",
        &[
            // Not "before" or "past" alone: "check before unloading", "past the limit".
            &["incident"],
            &["incidents"],
            &["this", "before"],
            &["that", "before"],
            &["in", "the", "past"],
            &["earlier"],
            &["previous"],
            &["previously"],
            &["history"],
            &["happened"],
            &["recurring"],
            &["last", "time"],
        ],
    ),
    (
        "proposal",
        &[
            &["proposal"],
            &["proposals"],
            &["offer"],
            &["offered"],
            &["deal"],
            &["pricing"],
            &["price"],
            &["prices"],
            &["quote"],
            &["quoted"],
            &["discount"],
        ],
    ),
    (
        "ticket",
        &[
            &["ticket"],
            &["tickets"],
            &["complaint"],
            &["complained"],
            &["support", "case"],
        ],
    ),
];

/// The kinds `query` asks for; empty when it asks for none, or for more than two (then the
/// wording says nothing useful about the kind).
pub fn asked_kinds(query: &str) -> Vec<&'static str> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let says = |cue: &[&str]| words.windows(cue.len()).any(|w| w == cue);
    let kinds: Vec<&'static str> = CUES
        .iter()
        .filter(|(_, cues)| cues.iter().any(|c| says(c)))
        .map(|(kind, _)| *kind)
        .collect();
    if kinds.len() > 2 { Vec::new() } else { kinds }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_s_wording_names_the_kind_it_asks_for() {
        assert_eq!(
            asked_kinds("PLANT-1: pump noise. How do we fix it?"),
            ["sop"]
        );
        assert_eq!(
            asked_kinds("What's the procedure for a stuck gauge on the press?"),
            ["sop"]
        );
        assert_eq!(asked_kinds("Has M-012 had this before?"), ["incident"]);
        assert_eq!(asked_kinds("Did that happen earlier?"), ["incident"]);
        // Words that ask for incidents only in some sentences do not count alone.
        assert!(asked_kinds("a truck arrived, what do we check before unloading").is_empty());
        assert_eq!(
            asked_kinds("way too hot, past the red zone. How do we fix it?"),
            ["sop"]
        );
        assert_eq!(
            asked_kinds("Which deal did Acme get from us on pumps?"),
            ["proposal"]
        );
        assert_eq!(asked_kinds("open tickets of C-0042"), ["ticket"]);
        // Whole words only: "fixture" is not "fix", "pastry" not "past".
        assert!(asked_kinds("fixture pastry dealer").is_empty());
        assert!(asked_kinds("bearing temperature").is_empty());
        // Two kinds asked at once are both preferred; more say nothing.
        assert_eq!(
            asked_kinds("Has this happened before, and how do we fix it?"),
            ["sop", "incident"]
        );
        assert!(asked_kinds("previous tickets, an offer? procedure").is_empty());
    }
}

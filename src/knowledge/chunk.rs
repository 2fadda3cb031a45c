//! Cutting documents into overlapping chunks of words, each small enough for the model's
//! 256-token window (about 160 English words leave room for word pieces).

/// One chunk of a document: its position and text (the title leads every chunk, so a chunk
/// cut from the middle still says what it belongs to).
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub no: i32,
    pub text: String,
}

/// Chunks of `words` words, consecutive chunks sharing `overlap` words; a body that fits is
/// one chunk. The cut prefers a paragraph or sentence end within the last quarter of a chunk.
pub fn chunks(title: &str, body: &str, words: usize, overlap: usize) -> Vec<Chunk> {
    let tokens: Vec<&str> = body.split_whitespace().collect();
    let step_min = words.saturating_sub(overlap).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let mut end = (start + words).min(tokens.len());
        if end < tokens.len() {
            // Back up to a sentence end if one is near.
            let floor = start + words * 3 / 4;
            if let Some(cut) = (floor..end).rev().find(|&i| {
                let w = tokens[i - 1];
                w.ends_with('.') || w.ends_with('?') || w.ends_with('!') || w.ends_with(':')
            }) {
                end = cut;
            }
        }
        let text = format!("{title}. {}", tokens[start..end].join(" "));
        out.push(Chunk {
            no: out.len() as i32,
            text,
        });
        if end >= tokens.len() {
            break;
        }
        start = (end.saturating_sub(overlap)).max(start + step_min.min(end - start));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_bodies_are_one_chunk_and_long_ones_overlap_without_losing_a_word() {
        assert_eq!(
            chunks("T", "a b c.", 10, 2),
            vec![Chunk {
                no: 0,
                text: "T. a b c.".into()
            }]
        );
        let body: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        let body = body.join(" ");
        let cs = chunks("T", &body, 30, 5);
        assert!(cs.len() >= 4, "{cs:?}");
        // Every word is in some chunk, and consecutive chunks share words.
        for i in 0..100 {
            let w = format!("w{i}");
            assert!(
                cs.iter().any(|c| c.text.split(' ').any(|t| t == w)),
                "{w} lost"
            );
        }
        for pair in cs.windows(2) {
            let last: Vec<&str> = pair[0].text.split(' ').collect();
            assert!(pair[1].text.contains(last[last.len() - 1]), "no overlap");
        }
        assert!(cs.iter().all(|c| c.text.split(' ').count() <= 31));
    }

    #[test]
    fn chunks_end_at_a_sentence_when_one_is_near() {
        let body = "one two three four five six. seven eight nine ten eleven twelve";
        let cs = chunks("T", body, 8, 2);
        assert!(cs[0].text.ends_with("six."), "{cs:?}");
    }
}

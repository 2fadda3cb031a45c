//! Retrieval quality against the corpus's ground truth ([`crate::sim::documents`]): every
//! labelled question is asked in keyword-only, vector-only and hybrid mode and scored by
//! recall@5, recall@10 and MRR@10.
//!
//! recall@k of one question is the share of its answers among the top k, capped by k (a
//! question with 12 matching incidents is fully answered by any 10 of them at k = 10); MRR@10 is
//! 1 / rank of the first answer within the top 10, else 0. Both are averaged over questions.

use std::collections::HashSet;

use serde::Serialize;

use crate::Result;
use crate::knowledge::{Knowledge, Mode, SearchRequest, Visible};
use crate::sim::documents::Question;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub queries: usize,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr_at_10: f64,
    /// The same, per kind of document asked for.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub by_kind: std::collections::BTreeMap<String, Scores>,
    /// The questions not fully answered within the top 5, with what was found instead.
    #[serde(skip)]
    pub misses: Vec<Miss>,
}

/// A question whose answers were not all among the top 5: what a search engineer reads to see
/// why.
#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    #[serde(flatten)]
    pub question: Question,
    pub recall_at_5: f64,
    /// The top 10 as (document id, title, score), answers marked with a leading `*`.
    pub found: Vec<(String, String, f32)>,
}

impl Scores {
    fn add(&mut self, at_5: f64, at_10: f64, rr: f64) {
        self.queries += 1;
        self.recall_at_5 += at_5;
        self.recall_at_10 += at_10;
        self.mrr_at_10 += rr;
    }

    fn average(&mut self) {
        let n = self.queries.max(1) as f64;
        self.recall_at_5 /= n;
        self.recall_at_10 /= n;
        self.mrr_at_10 /= n;
        for s in self.by_kind.values_mut() {
            s.average();
        }
    }
}

/// Scores of `questions` in one mode, searching every document (the evaluation reads as an
/// admin would: tenancy has its own tests). `within_kind` asks each question of the kind of
/// document that answers it (as an agent does when it passes `kinds`: SOPs for "how do we fix
/// it", incidents for "has this happened before"); otherwise every kind competes.
pub async fn score(
    knowledge: &Knowledge,
    questions: &[Question],
    mode: Mode,
    within_kind: bool,
) -> Result<Scores> {
    let mut s = Scores::default();
    for q in questions {
        let mut request = SearchRequest::new(q.query.clone(), 10);
        request.mode = mode;
        if within_kind {
            request.kinds = vec![q.kind.clone()];
        }
        let hits = knowledge
            .search("eval", &request, &Visible::Everything)
            .await?;
        let ranked: Vec<&str> = hits.iter().map(|h| h.doc.doc_id.as_str()).collect();
        let answers: HashSet<&str> = q.answers.iter().map(String::as_str).collect();
        let found = |k: usize| {
            ranked
                .iter()
                .take(k)
                .filter(|d| answers.contains(**d))
                .count()
        };
        let at_5 = found(5) as f64 / answers.len().min(5) as f64;
        let at_10 = found(10) as f64 / answers.len().min(10) as f64;
        let rr = ranked
            .iter()
            .position(|d| answers.contains(d))
            .map_or(0.0, |rank| 1.0 / (rank + 1) as f64);
        s.add(at_5, at_10, rr);
        if at_5 < 1.0 {
            s.misses.push(Miss {
                question: q.clone(),
                recall_at_5: at_5,
                found: hits
                    .iter()
                    .map(|h| {
                        let mark = if answers.contains(h.doc.doc_id.as_str()) {
                            "*"
                        } else {
                            ""
                        };
                        (
                            format!("{mark}{}", h.doc.doc_id),
                            h.doc.title.clone(),
                            h.score,
                        )
                    })
                    .collect(),
            });
        }
        s.by_kind
            .entry(q.kind.clone())
            .or_default()
            .add(at_5, at_10, rr);
    }
    s.average();
    Ok(s)
}

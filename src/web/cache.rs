//! Rendered panels, shared by everyone who sees the same thing: a panel's HTML is a function of
//! the principal (its grants, filters and masks), the view, the panel and the versions of the
//! tables it reads. After a commit, the first of a principal's open pages to ask renders the
//! panel; the others (and anyone loading the page meanwhile) wait for that rendering and share
//! it, instead of each running the same tool calls. The Machines page's default machine is kept
//! the same way.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// What a rendering is about: principal, view and panel.
pub type Key = String;
/// The versions of the panel's tables the rendering was asked at.
pub type Versions = Vec<Option<i64>>;

/// A rendering, and whether it may be kept (an error is not).
#[derive(Clone)]
pub struct Rendered {
    pub body: Arc<str>,
    pub keep: bool,
}

type Slot = (Versions, Arc<OnceCell<Rendered>>);

/// The newest rendering per key, at most `capacity` keys (least recently used leave first).
#[derive(Clone)]
pub struct Renders {
    slots: Arc<Mutex<lru::LruCache<Key, Slot>>>,
}

impl Renders {
    pub fn new(capacity: usize) -> Renders {
        Renders {
            slots: Arc::new(Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("at least 1"),
            ))),
        }
    }

    /// The rendering of `key` at `versions`: shared if there is one (or one under way), else
    /// made by `render`.
    pub async fn get<F, Fut>(&self, key: Key, versions: Versions, render: F) -> Arc<str>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Rendered>,
    {
        let cell = {
            let mut slots = self.slots.lock().expect("poisoned");
            match slots.get(&key) {
                Some((v, cell)) if *v == versions => cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    slots.put(key.clone(), (versions, cell.clone()));
                    cell
                }
            }
        };
        let rendered = cell.get_or_init(render).await.clone();
        if !rendered.keep {
            // The next asker tries again (unless a newer rendering took the slot already).
            let mut slots = self.slots.lock().expect("poisoned");
            if slots.peek(&key).is_some_and(|(_, c)| Arc::ptr_eq(c, &cell)) {
                slots.pop(&key);
            }
        }
        rendered.body
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().expect("poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ok(s: &str) -> Rendered {
        Rendered {
            body: Arc::from(s),
            keep: true,
        }
    }

    #[tokio::test]
    async fn one_rendering_per_key_and_versions_shared_by_concurrent_askers() {
        let renders = Renders::new(8);
        let calls = Arc::new(AtomicUsize::new(0));
        let ask = |versions: Versions| {
            let (renders, calls) = (renders.clone(), calls.clone());
            async move {
                renders
                    .get("maria|stock|shortages".into(), versions, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        ok("<section>v1</section>")
                    })
                    .await
            }
        };
        let bodies = futures::future::join_all((0..10).map(|_| ask(vec![Some(1)]))).await;
        assert!(bodies.iter().all(|b| &**b == "<section>v1</section>"));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "ten askers, one rendering");
        // A new version is a new rendering; the old one is not kept beside it.
        ask(vec![Some(2)]).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(renders.len(), 1);
    }

    #[tokio::test]
    async fn errors_are_not_kept_and_keys_are_bounded() {
        let renders = Renders::new(2);
        let failed = renders
            .get("a".into(), vec![Some(1)], || async {
                Rendered {
                    body: Arc::from("error"),
                    keep: false,
                }
            })
            .await;
        assert_eq!(&*failed, "error");
        let again = renders
            .get("a".into(), vec![Some(1)], || async { ok("fine") })
            .await;
        assert_eq!(
            &*again, "fine",
            "an error is rendered again at the next ask"
        );
        for k in ["b", "c", "d"] {
            renders.get(k.into(), vec![], || async { ok(k) }).await;
        }
        assert_eq!(renders.len(), 2);
    }
}

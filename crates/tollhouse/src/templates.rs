//! Route templates as shared strings for the usage log, without an allocation per request.
//!
//! Every call record names its route (`/v1/items/{id}`), and axum hands the template over only as
//! a `&str`. Copying it would allocate on every request; a map shared by all threads would put its
//! lock word (or its reference counts) on every request of every thread. So each thread keeps its
//! own set of the templates it has seen: an app has a bounded number of routes, and past
//! [`MAX_PER_THREAD`] of them (a router built per request, say) templates are simply copied.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

/// Templates a thread keeps at most.
const MAX_PER_THREAD: usize = 1024;

thread_local! {
    static TEMPLATES: RefCell<HashSet<Arc<str>, foldhash::fast::FixedState>> =
        RefCell::new(HashSet::with_hasher(foldhash::fast::FixedState::default()));
}

/// `template` as a shared string: the one this thread made for it before, or a new one.
pub(crate) fn shared(template: &str) -> Arc<str> {
    TEMPLATES
        .try_with(|templates| {
            let mut templates = templates.borrow_mut();
            if let Some(known) = templates.get(template) {
                return Arc::clone(known);
            }
            let fresh: Arc<str> = Arc::from(template);
            if templates.len() < MAX_PER_THREAD {
                templates.insert(Arc::clone(&fresh));
            }
            fresh
        })
        // The thread is ending: copy.
        .unwrap_or_else(|_| Arc::from(template))
}

/// `path` as a shared string, reusing `route`'s when they are equal (a route without parameters
/// requested without a query).
pub(crate) fn path(path: &str, route: Option<&Arc<str>>) -> Arc<str> {
    match route {
        Some(route) if **route == *path => Arc::clone(route),
        _ => Arc::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_is_shared_and_a_path_reuses_its_route() {
        let first = shared("/v1/items/{id}");
        let again = shared("/v1/items/{id}");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(&*shared("/v1/other"), "/v1/other");

        let items = shared("/v1/items");
        assert!(Arc::ptr_eq(&path("/v1/items", Some(&items)), &items));
        let with_query = path("/v1/items?page=2", Some(&items));
        assert_eq!(&*with_query, "/v1/items?page=2");
        assert_eq!(&*path("/v1/items", None), "/v1/items");
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_templates() {
        std::thread::spawn(|| {
            for n in 0..MAX_PER_THREAD + 10 {
                let _ = shared(&format!("/r/{n}"));
            }
            TEMPLATES.with(|templates| assert_eq!(templates.borrow().len(), MAX_PER_THREAD));
            // Past the bound, templates are still right, only not kept.
            assert_eq!(&*shared("/late"), "/late");
        })
        .join()
        .expect("the thread ran");
    }
}

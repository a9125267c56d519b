//! Which requests a job may make: an optional allow-list of methods and path prefixes.
//!
//! The queue's policy decides who may send jobs; this decides what a sent job may ask the API
//! for, with the organisation's credential. A stack that only reads customers sets
//! `ALLOWED_METHODS=GET` and `ALLOWED_PATH_PREFIXES=/v1/customers/`, and a job asking for
//! anything else is refused with the reason before it takes a quota slot (the orchestrator)
//! and again before it is called (the worker). Empty lists allow everything, as before.

use crate::job::{Job, JobError, Method};

/// The methods and path prefixes jobs may use; an empty list allows all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    methods: Vec<Method>,
    prefixes: Vec<String>,
}

/// Why an allow-list could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    /// A method that is not one a job can use.
    #[error("`{0}` is not a method a job can use (GET, POST, PUT, PATCH, DELETE, HEAD)")]
    Method(String),
    /// A prefix that is not an absolute path.
    #[error("path prefix `{0}` must start with `/` and carry no query, `..` or spaces")]
    Prefix(String),
}

impl AllowList {
    /// Everything allowed.
    pub fn any() -> AllowList {
        AllowList::default()
    }

    /// From comma-separated lists, as the environment carries them: methods by name in any
    /// case (`GET,post`), prefixes as paths (`/v1/customers/,/v1/orders`). Blank entries are
    /// skipped, so an empty string allows all.
    pub fn parse(methods: &str, prefixes: &str) -> Result<AllowList, AllowListError> {
        let entries = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect()
        };
        let methods = entries(methods)
            .into_iter()
            .map(|m| {
                serde_json::from_value::<Method>(serde_json::Value::String(m.to_uppercase()))
                    .map_err(|_| AllowListError::Method(m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prefixes = entries(prefixes);
        for p in &prefixes {
            let dots = p.split('/').any(|s| s == "..");
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) || dots {
                return Err(AllowListError::Prefix(p.clone()));
            }
        }
        Ok(AllowList { methods, prefixes })
    }

    /// Whether everything is allowed.
    pub fn is_open(&self) -> bool {
        self.methods.is_empty() && self.prefixes.is_empty()
    }

    /// Refuses a job whose method or path is not on the lists. A prefix matches whole
    /// segments: `/v1/customers` allows `/v1/customers` and `/v1/customers/42`, not
    /// `/v1/customers-admin`; a prefix that ends in `/` allows only what is under it. The
    /// path is compared as the job wrote it (the worker refuses `..` segments, plain or
    /// percent-encoded, before any of this), so an encoded spelling of an allowed prefix is
    /// refused, never let through.
    pub fn check(&self, job: &Job) -> Result<(), JobError> {
        if !self.methods.is_empty() && !self.methods.contains(&job.method) {
            return Err(JobError::MethodNotAllowed(job.method.as_str().to_string()));
        }
        let path = job.path.split(['?', '#']).next().unwrap_or_default();
        if !self.prefixes.is_empty() && !self.prefixes.iter().any(|p| under(path, p)) {
            return Err(JobError::PathNotAllowed(job.path.clone()));
        }
        Ok(())
    }
}

/// Whether `path` is `prefix` or lies under it, segment by segment.
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(method: Method, path: &str) -> Job {
        Job {
            method,
            path: path.to_string(),
            ..Job::default()
        }
    }

    #[test]
    fn empty_lists_allow_every_job() {
        let open = AllowList::parse("", " , ").expect("empty");
        assert!(open.is_open());
        assert_eq!(open.check(&job(Method::Delete, "/anything")), Ok(()));
    }

    #[test]
    fn methods_are_read_in_any_case_and_others_refused() {
        let list = AllowList::parse("get, Post", "").expect("valid");
        assert_eq!(list.check(&job(Method::Get, "/a")), Ok(()));
        assert_eq!(list.check(&job(Method::Post, "/a")), Ok(()));
        assert_eq!(
            list.check(&job(Method::Delete, "/a")),
            Err(JobError::MethodNotAllowed("DELETE".into()))
        );
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let list = AllowList::parse("", "/v1/customers,/v2/orders/").expect("valid");
        for ok in [
            "/v1/customers",
            "/v1/customers/42",
            "/v1/customers?page=2",
            "/v2/orders/7",
        ] {
            assert_eq!(list.check(&job(Method::Get, ok)), Ok(()), "{ok}");
        }
        for refused in [
            "/v1/customers-admin",
            "/v1/customer",
            "/v2/orders",
            "/v1/%63ustomers/42",
            "/admin",
        ] {
            assert_eq!(
                list.check(&job(Method::Get, refused)),
                Err(JobError::PathNotAllowed(refused.into())),
                "{refused}"
            );
        }
    }

    #[test]
    fn bad_entries_name_what_is_wrong() {
        assert_eq!(
            AllowList::parse("GET,FETCH", ""),
            Err(AllowListError::Method("FETCH".into()))
        );
        for bad in ["v1/customers", "/v1?x=1", "/v1/../admin", "/a b"] {
            assert_eq!(
                AllowList::parse("", bad),
                Err(AllowListError::Prefix(bad.into())),
                "{bad}"
            );
        }
    }
}

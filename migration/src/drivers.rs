//! Which database drivers this build has: the `postgres`, `mysql` and `sqlite` features (all on
//! by default; agent-webhooks forwards its own features of the same names), so that an app on
//! one database compiles one sqlx driver. A URL naming a backend left out is refused by name
//! before connecting, rather than with SeaORM's "has no supporting driver".

use std::fmt;

/// A database URL names a backend whose driver this build leaves out (its cargo feature is off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendNotCompiled {
    /// The cargo feature that would compile it: `"postgres"`, `"mysql"` or `"sqlite"`.
    pub backend: &'static str,
}

impl fmt::Display for BackendNotCompiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the database URL names {}, whose driver this build leaves out: enable the `{}` \
             feature of agent-webhooks (or of migration)",
            name(self.backend),
            self.backend
        )
    }
}

impl std::error::Error for BackendNotCompiled {}

fn name(backend: &str) -> &'static str {
    match backend {
        "postgres" => "PostgreSQL",
        "mysql" => "MySQL/MariaDB",
        _ => "SQLite",
    }
}

/// Whether this build has the driver of `backend` (`"postgres"`, `"mysql"` or `"sqlite"`).
pub fn backend_compiled(backend: &str) -> bool {
    COMPILED.iter().any(|&(name, on)| on && name == backend)
}

/// Each backend's feature, and whether this build has it.
const COMPILED: [(&str, bool); 3] = [
    ("postgres", cfg!(feature = "postgres")),
    ("mysql", cfg!(feature = "mysql")),
    ("sqlite", cfg!(feature = "sqlite")),
];

/// Refuses a `url` whose backend this build has no driver for (see the module docs). Any other
/// URL passes, including ones that do not parse: connecting says what is wrong with those.
///
/// # Errors
///
/// [`BackendNotCompiled`], naming the cargo feature to enable.
pub fn check_compiled(url: &str) -> Result<(), BackendNotCompiled> {
    check_against(url, backend_compiled)
}

/// [`check_compiled`] against a given set of compiled backends, so that tests cover each
/// combination in any build.
fn check_against(url: &str, compiled: fn(&str) -> bool) -> Result<(), BackendNotCompiled> {
    let Some((scheme, _)) = url.split_once(':') else {
        return Ok(());
    };
    // The schemes SeaORM dispatches on (`Url` lower-cases them).
    let backend = match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => "postgres",
        "mysql" => "mysql",
        "sqlite" => "sqlite",
        _ => return Ok(()),
    };
    if compiled(backend) {
        Ok(())
    } else {
        Err(BackendNotCompiled { backend })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_left_out_is_refused_by_name() {
        fn only_postgres(backend: &str) -> bool {
            backend == "postgres"
        }
        assert_eq!(check_against("postgres://u@h/db", only_postgres), Ok(()));
        assert_eq!(check_against("PostgreSQL://u@h/db", only_postgres), Ok(()));
        for (url, backend) in [
            ("mysql://root@127.0.0.1:3306/app", "mysql"),
            ("MySQL://root@h/app", "mysql"),
            ("sqlite://app.db?mode=rwc", "sqlite"),
            ("sqlite::memory:", "sqlite"),
        ] {
            let err = check_against(url, only_postgres).unwrap_err();
            assert_eq!(err.backend, backend, "{url}");
            assert!(
                err.to_string().contains(&format!("`{backend}` feature")),
                "{err}"
            );
        }
        // Not ours to judge: connecting names what is wrong.
        assert_eq!(check_against("redis://h", only_postgres), Ok(()));
        assert_eq!(check_against("no scheme", only_postgres), Ok(()));
    }

    #[test]
    fn this_build_accepts_exactly_its_features() {
        for (url, backend) in [
            ("postgres://u@h/db", "postgres"),
            ("mysql://u@h/db", "mysql"),
            ("sqlite::memory:", "sqlite"),
        ] {
            assert_eq!(
                check_compiled(url).is_ok(),
                backend_compiled(backend),
                "{url}"
            );
        }
    }
}

//! What a token may do: its grants claim, as namespaces and access levels.
//! `"orders"` reads and writes `orders`; `"orders:read"` only reads;
//! `"orders:admin"` administers it (Admin API); `"*"`, `"*:read"` and
//! `"*:admin"` do the same for every namespace. Admin does not imply data
//! access, nor data access admin: grants are explicit.

use std::fmt;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Admin,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// None: every namespace.
    namespace: Option<String>,
    read: bool,
    write: bool,
    admin: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    grants: Vec<Grant>,
    /// The grants as the token spelt them (for messages).
    spelt: Vec<String>,
}

impl Grants {
    /// Parses the claim's strings; entries that are not grants are ignored
    /// (and listed in `spelt`, so a refusal shows what the token carried).
    pub fn parse<'a>(claim: impl IntoIterator<Item = &'a str>) -> Grants {
        let mut out = Grants::default();
        for entry in claim {
            out.spelt.push(entry.to_string());
            let (name, level) = match entry.rsplit_once(':') {
                Some((name, level)) => (name, Some(level)),
                None => (entry, None),
            };
            let (read, write, admin) = match level {
                None => (true, true, false),
                Some("read") => (true, false, false),
                Some("write") => (true, true, false),
                Some("admin") => (false, false, true),
                Some(_) => continue,
            };
            if name.is_empty() {
                continue;
            }
            out.grants.push(Grant {
                namespace: (name != "*").then(|| name.to_string()),
                read,
                write,
                admin,
            });
        }
        out
    }

    pub fn allows(&self, namespace: &str, access: Access) -> bool {
        self.grants.iter().any(|g| {
            g.namespace.as_deref().is_none_or(|n| n == namespace)
                && match access {
                    Access::Read => g.read,
                    Access::Write => g.write,
                    Access::Admin => g.admin,
                }
        })
    }

    /// Whether any grant administers something (server-wide Admin calls:
    /// uploading and listing patterns).
    pub fn admin_anywhere(&self) -> bool {
        self.grants.iter().any(|g| g.admin)
    }

    /// Whether a grant administers every namespace (`*:admin`): what
    /// setting a namespace's limits and quotas through Admin needs, since
    /// they decide how much of the server one tenant may take.
    pub fn admin_everywhere(&self) -> bool {
        self.grants.iter().any(|g| g.admin && g.namespace.is_none())
    }

    /// The namespaces named by admin grants; None for `*:admin` (every
    /// namespace). What an upload is scoped to.
    pub fn admin_namespaces(&self) -> Option<std::collections::BTreeSet<String>> {
        if self.admin_everywhere() {
            return None;
        }
        Some(
            self.grants
                .iter()
                .filter(|g| g.admin)
                .filter_map(|g| g.namespace.clone())
                .collect(),
        )
    }

    /// The grants for messages: `orders:read, *:admin` or `none`.
    pub fn describe(&self) -> String {
        if self.spelt.is_empty() {
            "none".into()
        } else {
            self.spelt.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_by_namespace_and_level() {
        let g = Grants::parse(["orders", "users:read", "ops:admin", "bogus:level"]);
        assert!(g.allows("orders", Access::Read) && g.allows("orders", Access::Write));
        assert!(!g.allows("orders", Access::Admin));
        assert!(g.allows("users", Access::Read) && !g.allows("users", Access::Write));
        assert!(g.allows("ops", Access::Admin) && !g.allows("ops", Access::Read));
        assert!(!g.allows("other", Access::Read));
        assert!(!g.allows("bogus", Access::Read));
        let all = Grants::parse(["*"]);
        assert!(all.allows("anything", Access::Write) && !all.allows("anything", Access::Admin));
        let admin = Grants::parse(["*:admin"]);
        assert!(admin.allows("x", Access::Admin) && !admin.allows("x", Access::Read));
        assert!(admin.admin_everywhere() && admin.admin_anywhere());
        let one = Grants::parse(["ops:admin", "*"]);
        assert!(one.admin_anywhere() && !one.admin_everywhere());
        assert_eq!(Grants::parse([]).describe(), "none");
        assert_eq!(g.describe(), "orders, users:read, ops:admin, bogus:level");
    }
}

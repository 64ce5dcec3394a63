//! Resolving an exec's `user` against the image's own /etc/passwd and /etc/group (read
//! inside the container, bounded), the way Docker's `USER` works: `name`, `uid`,
//! `name:group`, `uid:gid`.

use std::io::Read;

/// Larger account databases are refused rather than read whole.
const MAX_DB: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
}

fn read_db(path: &str) -> Result<String, String> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let mut s = String::new();
    f.take(MAX_DB + 1)
        .read_to_string(&mut s)
        .map_err(|e| format!("{path}: {e}"))?;
    if s.len() as u64 > MAX_DB {
        return Err(format!("{path} is larger than {MAX_DB} bytes"));
    }
    Ok(s)
}

pub(super) fn resolve(spec: &str) -> Result<Ids, String> {
    let passwd = read_db("/etc/passwd")?;
    let group = read_db("/etc/group")?;
    resolve_in(spec, &passwd, &group)
}

/// `(name, uid, gid)` of each passwd line.
fn accounts(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

/// `(name, gid, members)` of each group line.
fn groups(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

pub(super) fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<Ids, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("user {spec:?} is empty"));
    }
    let found = accounts(passwd)
        .find(|(name, uid, _)| *name == user || user.parse::<u32>().ok() == Some(*uid));
    let (name, uid, primary) = match (found, user.parse::<u32>()) {
        (Some(a), _) => (Some(a.0), a.1, a.2),
        // A numeric uid the image does not list runs with gid 0, as Docker does.
        (None, Ok(uid)) => (None, uid, 0),
        (None, Err(_)) => return Err(format!("user {user:?} is not in the image's /etc/passwd")),
    };
    let gid = match grp {
        None => primary,
        Some(g) => {
            match groups(group).find(|(n, gid, _)| *n == g || g.parse::<u32>().ok() == Some(*gid)) {
                Some((_, gid, _)) => gid,
                None => g
                    .parse()
                    .map_err(|_| format!("group {g:?} is not in the image's /etc/group"))?,
            }
        }
    };
    let mut list = vec![gid];
    if let Some(name) = name {
        for (_, g, members) in groups(group) {
            if members.contains(&name) && !list.contains(&g) {
                list.push(g);
            }
        }
    }
    Ok(Ids {
        uid,
        gid,
        groups: list,
    })
}

/// The name of `uid` in the image, if it lists one.
pub(super) fn name_of(uid: u32) -> Option<String> {
    let passwd = read_db("/etc/passwd").ok()?;
    accounts(&passwd)
        .find(|(_, u, _)| *u == uid)
        .map(|(n, _, _)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\nbuilder:x:1000:\nwheel:x:10:builder,other\naudio:x:29:\n";

    #[test]
    fn names_and_numbers() {
        let b = resolve_in("builder", PASSWD, GROUP).unwrap();
        assert_eq!(
            (b.uid, b.gid, b.groups.clone()),
            (1000, 1000, vec![1000, 10])
        );
        assert_eq!(resolve_in("1000", PASSWD, GROUP).unwrap(), b);
        let r = resolve_in("root:audio", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid, r.groups), (0, 29, vec![29]));
        let n = resolve_in("4242:77", PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid), (4242, 77));
        assert_eq!(resolve_in("4242", PASSWD, GROUP).unwrap().gid, 0);
    }

    #[test]
    fn unknown_names_fail_clearly() {
        assert!(
            resolve_in("nobody", PASSWD, GROUP)
                .unwrap_err()
                .contains("/etc/passwd")
        );
        assert!(
            resolve_in("root:nogroup", PASSWD, GROUP)
                .unwrap_err()
                .contains("/etc/group")
        );
        assert!(resolve_in("", PASSWD, GROUP).is_err());
    }
}

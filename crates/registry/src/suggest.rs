//! "Did you mean …?": the nearest known names to an unknown one.

/// Up to three of `candidates` closest to `target` (edit distance, case-insensitive), or that
/// contain it, nearest first.
pub fn nearest<'a>(target: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let t = target.to_ascii_lowercase();
    let max = (t.chars().count() / 3).max(1);
    let mut scored: Vec<(usize, String)> = candidates
        .into_iter()
        .filter(|c| *c != target)
        .filter_map(|c| {
            let lc = c.to_ascii_lowercase();
            let d = distance(&t, &lc);
            let close = d <= max || (t.len() >= 3 && (lc.starts_with(&t) || lc.contains(&t)));
            close.then(|| (d, c.to_string()))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment),
/// so `wbe` is one edit from `web`. Inputs are names of at most 64 characters; longer ones
/// are cut, which bounds the work.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(128).collect();
    let b: Vec<char> = b.chars().take(128).collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[n][m]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos() {
        assert_eq!(nearest("wbe", ["web", "db", "prod"]), vec!["web"]);
        assert_eq!(nearest("prdo", ["dev", "prod", "latest"]), vec!["prod"]);
        assert!(nearest("zzzzzz", ["web"]).is_empty());
        assert_eq!(nearest("01JB", ["01JBXYZ", "02AA"]), vec!["01JBXYZ"]);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("wbe", "web"), 1);
    }
}

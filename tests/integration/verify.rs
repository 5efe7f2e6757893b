//! `nixdelta verify` on a file:// cache: clean after a push, and every kind
//! of fault found and listed (exit 9).

use crate::helpers::servers::{assert_verify_clean, verify};
use crate::helpers::util::*;

#[test]
fn verify_file_cache_clean_then_each_fault_listed() {
    let env = Env::new();
    let out = env.build("fib.nix", &["chain6"]);
    let (sec, public) = env.keygen("ver-1");
    let url = env.cache_url();
    ok(env
        .nixdelta(&["push", "--to", &url, "--secret-key-file"])
        .arg(&sec)
        .arg(&out[0]));
    let v = assert_verify_clean(&env, &url, &[&public], &["--check-contents"]);
    assert!(
        v.contains("7 narinfos, 7 NARs present, 7 NARs hashed"),
        "{v}"
    );
    // A key file works as well as the key itself.
    let key_file = env.path("keys/ver-1.pub");
    assert_verify_clean(&env, &url, &[key_file.to_str().unwrap()], &[]);

    let cache = env.path("cache");
    let paths = closure(&env, &out[0]);
    let hash = |suffix: &str| {
        let p = paths.iter().find(|p| p.ends_with(suffix)).unwrap();
        p["/nix/store/".len()..][..32].to_string()
    };
    let read = |h: &str| std::fs::read_to_string(cache.join(format!("{h}.narinfo"))).unwrap();
    let write = |h: &str, t: &str| std::fs::write(cache.join(format!("{h}.narinfo")), t).unwrap();

    // chain-1: NarSize altered (the signature no longer verifies).
    let h1 = hash("-chain-1");
    let t = read(&h1);
    let size = narinfo_field(&t, "NarSize").unwrap();
    write(
        &h1,
        &t.replace(
            &format!("NarSize: {size}"),
            &format!("NarSize: {}", size.parse::<u64>().unwrap() + 8),
        ),
    );
    // chain-2: its NAR has different bytes of the same length.
    let h2 = hash("-chain-2");
    let nar2 = cache.join(narinfo_field(&read(&h2), "URL").unwrap());
    let mut bytes = std::fs::read(&nar2).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&nar2, bytes).unwrap();
    // chain-3: NAR gone. chain-0: narinfo gone (chain-2 references it).
    let h3 = hash("-chain-3");
    std::fs::remove_file(cache.join(narinfo_field(&read(&h3), "URL").unwrap())).unwrap();
    let h0 = hash("-chain-0");
    std::fs::remove_file(cache.join(format!("{h0}.narinfo"))).unwrap();
    // chain-4: not a narinfo at all.
    let h4 = hash("-chain-4");
    write(&h4, "garbage\n");

    let r = verify(&env, &url, &[&public], &["--check-contents"]);
    assert_eq!(r.status.code(), Some(9), "{}", show(&r));
    let text = String::from_utf8_lossy(&r.stdout);
    let faults: Vec<&str> = text.lines().filter(|l| l.starts_with("fault: ")).collect();
    let has = |h: &str, what: &str| {
        assert!(
            faults
                .iter()
                .any(|f| f.contains(&format!("{h}.narinfo")) && f.contains(what)),
            "no fault {h} {what:?} in:\n{text}"
        )
    };
    has(&h1, "signature by a trusted key does not verify");
    has(&h1, "unpacks to");
    has(&h2, "has file hash");
    has(&h2, "does not decompress");
    has(&h3, "is missing");
    has(
        &hash("-chain-2"),
        &format!(
            "references {}",
            paths.iter().find(|p| p.ends_with("-chain-0")).unwrap()
        ),
    );
    has(&h4, "invalid narinfo");
    assert!(stderr(&r).contains("nixdelta: error:"), "{}", show(&r));
}

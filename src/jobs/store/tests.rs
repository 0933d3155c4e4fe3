//! The job store against a real PostgreSQL (a throwaway cluster from the integration tests' harness,
//! `tests/common/pg.rs`): one winner per (job, tick), tokens in the order claims were won, the
//! fleet-wide overlap rule and its lease, taking over a lost run (at-least-once only), the fence
//! function, renewal, retention; and a store nobody answers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::claim::{Ask, Claimed, Decision};
use super::{Store, StoreConfig, StoreError, StoreUrl};

#[path = "../../../tests/common/process.rs"]
mod process;
use process::{alive, children_of, free_port, wait_until};

#[allow(dead_code)]
#[path = "../../../tests/common/pg.rs"]
mod pg;
use pg::PgCluster;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn config(url: &str, lease: Duration) -> StoreConfig {
    StoreConfig {
        url: StoreUrl::parse(url).unwrap(),
        lease,
        retention: Duration::from_secs(7 * 86400),
    }
}

fn store(url: &str, owner: &str, lease: Duration) -> Store {
    Store::with_owner(config(url, lease), owner.to_string())
}

fn ask(job: &str, tick: DateTime<Utc>) -> Ask<'_> {
    Ask {
        job,
        tick,
        overlap: false,
        at_least_once: false,
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn won(c: &Claimed) -> Option<i64> {
    match c {
        Claimed::Won { token, .. } => Some(*token),
        Claimed::Lost(_) => None,
    }
}

#[test]
fn each_tick_has_one_winner_and_tokens_follow_the_order_of_wins() {
    let pg = PgCluster::start();
    let url = pg.url();
    let lease = Duration::from_secs(30);
    let (a, b) = (store(&url, "host-a", lease), store(&url, "host-b", lease));
    block_on(async {
        let mut tokens = Vec::new();
        let base = t("2026-01-01T00:00:00Z");
        for k in 0..20 {
            let tick = base + chrono::Duration::seconds(k);
            // Both hosts claim the same tick at once, on their own connections.
            let (ca, cb) = tokio::join!(
                a.claim(ask("usage", tick), soon()),
                b.claim(ask("usage", tick), soon())
            );
            let (ca, cb) = (ca.unwrap(), cb.unwrap());
            let (winner, token, loser) = match (won(&ca), won(&cb)) {
                (Some(tok), None) => (&a, tok, cb),
                (None, Some(tok)) => (&b, tok, ca),
                other => panic!("tick {k}: expected one winner, got {other:?} ({ca:?}, {cb:?})"),
            };
            assert_eq!(
                loser,
                Claimed::Lost(Decision::Elsewhere(winner.owner().to_string())),
                "the loser names the winner"
            );
            tokens.push(token);
            let finished = winner.finish("usage", tick, token, "ok", soon()).await;
            assert_eq!(finished.unwrap(), Some(true));
            // A late claim of a finished tick loses too, and does not use up a token.
            let late = a.claim(ask("usage", tick), soon()).await.unwrap();
            assert!(
                matches!(late, Claimed::Lost(Decision::Elsewhere(_))),
                "{late:?}"
            );
        }
        // Strictly increasing, and only winning claims move the counter.
        assert_eq!(tokens, (1..=20).collect::<Vec<i64>>());
        assert_eq!(
            a.latest("usage", soon()).await.unwrap(),
            Some(base + chrono::Duration::seconds(19))
        );
        assert_eq!(a.latest("other", soon()).await.unwrap(), None);
        // Tokens are per job.
        let other = a.claim(ask("other", base), soon()).await.unwrap();
        assert_eq!(won(&other), Some(1));
        // A tick older than one already claimed is coalesced into it.
        let old = b
            .claim(ask("usage", t("2025-12-31T23:59:59Z")), soon())
            .await
            .unwrap();
        assert_eq!(
            old,
            Claimed::Lost(Decision::Superseded(base + chrono::Duration::seconds(19)))
        );
    });
    let rows = pg.query(
        "SELECT count(*), count(DISTINCT token) FROM hyperfork_job_claims WHERE job = 'usage'",
    );
    assert_eq!(rows, vec![vec!["20".to_string(), "20".to_string()]]);
}

#[test]
fn a_live_run_holds_the_job_until_its_lease_expires_and_a_lost_run_is_taken_over_only_if_asked() {
    let pg = PgCluster::start();
    let url = pg.url();
    let lease = Duration::from_secs(1);
    let (a, b) = (store(&url, "host-a", lease), store(&url, "host-b", lease));
    block_on(async {
        let (t1, t2, t3) = (
            t("2026-01-01T00:00:01Z"),
            t("2026-01-01T00:00:02Z"),
            t("2026-01-01T00:00:03Z"),
        );
        let first = won(&a.claim(ask("j", t1), soon()).await.unwrap()).expect("a wins t1");
        // a's run of t1 goes on: b may not start t2 (no overlap), unless the job allows overlap.
        let busy = b.claim(ask("j", t2), soon()).await.unwrap();
        assert_eq!(busy, Claimed::Lost(Decision::Busy("host-a".into(), t1)));
        let overlapping = Ask {
            overlap: true,
            ..ask("j2", t1)
        };
        assert!(won(&b.claim(overlapping, soon()).await.unwrap()).is_some());
        // Renewing keeps it live.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            a.renew("j", t1, first, soon()).await.unwrap(),
            "renewed in time"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let still = b.claim(ask("j", t2), soon()).await.unwrap();
        assert!(
            matches!(still, Claimed::Lost(Decision::Busy(..))),
            "the renewal extended the lease: {still:?}"
        );
        assert_eq!(
            b.orphan("j", soon()).await.unwrap(),
            None,
            "a live claim is no orphan"
        );
        // a stops renewing (paused, or gone): once the lease expires, the claim is lost.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(
            !a.renew("j", t1, first, soon()).await.unwrap(),
            "an expired claim is not renewed"
        );
        assert_eq!(b.orphan("j", soon()).await.unwrap(), Some(t1));
        // At most once (the default): the lost tick is not run again.
        let again = b.claim(ask("j", t1), soon()).await.unwrap();
        assert_eq!(again, Claimed::Lost(Decision::Elsewhere("host-a".into())));
        // At least once: it is, with a higher token.
        let rerun = Ask {
            at_least_once: true,
            ..ask("j", t1)
        };
        let taken = b.claim(rerun, soon()).await.unwrap();
        let Claimed::Won {
            token,
            took_over: true,
        } = taken
        else {
            panic!("expected a take-over, got {taken:?}");
        };
        assert!(token > first);
        // The old run's end is not recorded over the new claim; the new one's is.
        assert_eq!(a.finish("j", t1, first, "ok", soon()).await.unwrap(), None);
        assert_eq!(
            b.finish("j", t1, token, "ok", soon()).await.unwrap(),
            Some(true)
        );
        // A finished tick is never taken over, and the next tick is free.
        let done = a.claim(rerun, soon()).await.unwrap();
        assert_eq!(done, Claimed::Lost(Decision::Elsewhere("host-b".into())));
        let next = won(&a.claim(ask("j", t3), soon()).await.unwrap()).expect("t3 is free");
        assert!(next > token);
    });
    let rows = pg.query("SELECT owner, attempts, outcome FROM hyperfork_job_claims WHERE job = 'j' AND tick = '2026-01-01T00:00:01Z'");
    assert_eq!(
        rows,
        vec![vec![
            "host-b".to_string(),
            "2".to_string(),
            "ok".to_string()
        ]]
    );
}

#[test]
fn the_fence_refuses_a_stale_token_and_retention_keeps_the_latest_claim() {
    let pg = PgCluster::start();
    let url = pg.url();
    let a = store(&url, "host-a", Duration::from_secs(30));
    let (t1, t2) = (t("2020-01-01T00:00:00Z"), t("2020-01-01T00:01:00Z"));
    block_on(async {
        let old = won(&a.claim(ask("fenced", t1), soon()).await.unwrap()).unwrap();
        assert_eq!(
            a.finish("fenced", t1, old, "ok", soon()).await.unwrap(),
            Some(true)
        );
        let new = won(&a.claim(ask("fenced", t2), soon()).await.unwrap()).unwrap();
        assert!(new > old);
    });
    // Through the app's own connection, as a job would.
    let guarded = |token: i64| {
        let mut c = pg.app_psql();
        c.arg("-c").arg(format!(
            "BEGIN; SELECT hyperfork_fence('fenced', {token}); CREATE TABLE IF NOT EXISTS w (token bigint); INSERT INTO w VALUES ({token}); COMMIT;"
        ));
        pg::run_within(c, Duration::from_secs(30)).unwrap()
    };
    let stale = guarded(1);
    assert!(!stale.status.success());
    let text = String::from_utf8_lossy(&stale.stderr).to_string();
    assert!(
        text.contains("stale fencing token 1 for job \"fenced\": a newer claim holds token 2"),
        "{text}"
    );
    assert!(guarded(2).status.success(), "{}", guarded(2).text());
    assert_eq!(
        pg.query("SELECT token FROM w"),
        vec![vec!["2".to_string()]],
        "only the fresh token wrote"
    );
    // The error's SQLSTATE is HF001, for apps that look for it.
    let code = pg.query(
        "DO $$ BEGIN PERFORM hyperfork_fence('fenced', 1); EXCEPTION WHEN SQLSTATE 'HF001' THEN RAISE NOTICE 'stale'; END $$; SELECT 'caught'",
    );
    assert_eq!(code, vec![vec!["caught".to_string()]]);
    // Retention: claims older than it go, except each job's latest.
    let short = Store::with_owner(
        StoreConfig {
            retention: Duration::ZERO,
            ..config(&url, Duration::from_secs(30))
        },
        "host-a".into(),
    );
    block_on(async {
        assert_eq!(short.prune("fenced", soon()).await.unwrap(), 1);
        assert_eq!(short.prune("fenced", soon()).await.unwrap(), 0);
    });
    assert_eq!(
        pg.query(
            "SELECT tick = '2020-01-01T00:01:00Z' FROM hyperfork_job_claims WHERE job = 'fenced'"
        ),
        vec![vec!["t".to_string()]]
    );
}

#[test]
fn a_store_nobody_answers_fails_within_the_deadline_and_backs_off() {
    // A port nothing listens on.
    let port = free_port();
    let s = store(
        &format!("postgres://app:app@127.0.0.1:{port}/app"),
        "host-a",
        Duration::from_secs(30),
    );
    block_on(async {
        let started = Instant::now();
        let e = s
            .claim(
                ask("j", t("2026-01-01T00:00:00Z")),
                Instant::now() + Duration::from_secs(3),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the deadline bounds the wait"
        );
        // Within the back-off, a claim with a short deadline fails at once, naming when the next
        // attempt is.
        let e = s
            .claim(
                ask("j", t("2026-01-01T00:00:01Z")),
                Instant::now() + Duration::from_millis(10),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("next connection attempt in"), "{e}");
    });
    // The harness's helpers are compiled here too; keep them used.
    let _ = (
        alive(1),
        children_of(1),
        wait_until(Duration::ZERO, || true),
    );
}

#[test]
fn urls_are_checked_and_shown_without_their_password() {
    let u =
        StoreUrl::parse("postgres://app:secret@db.internal:6432/prod?connect_timeout=3").unwrap();
    assert_eq!(u.to_string(), "postgres://app@db.internal:6432/prod");
    assert_eq!(format!("{u:?}"), "postgres://app@db.internal:6432/prod");
    let u = StoreUrl::parse("host=/run/postgresql user=app dbname=app").unwrap();
    assert_eq!(u.to_string(), "postgres://app@/run/postgresql:5432/app");
    for (bad, why) in [
        ("nonsense://", "expected a PostgreSQL URL"),
        (
            "postgres://app@h/db?sslmode=require",
            "TLS to the job store is not supported",
        ),
        ("user=app", "naming a host"),
    ] {
        let e = StoreUrl::parse(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

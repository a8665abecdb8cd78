//! The lease rules on each database.

use std::time::Duration;

use task_protocol::{EventAck, TaskStatus, WorkerEvent};
use test_support::{DbKind, TestDb};
use uuid::Uuid;

use crate::store::Store;

const LONG: Duration = Duration::from_secs(600);
/// A lease that has expired by the time the next statement runs.
const SHORT: Duration = Duration::from_millis(1);

fn progress(share: f64) -> WorkerEvent {
    WorkerEvent::Progress {
        progress: share,
        rows: 10,
    }
}

fn failed() -> WorkerEvent {
    WorkerEvent::Failed {
        error: "boom".into(),
    }
}

const DONE: WorkerEvent = WorkerEvent::Done {
    rows: 7,
    groups: 4,
    output_bytes: 99,
};

fn applied(status: TaskStatus) -> Option<EventAck> {
    Some(EventAck::of(status))
}

fn elsewhere(status: TaskStatus) -> Option<EventAck> {
    Some(EventAck {
        status,
        elsewhere: true,
    })
}

struct Fixture {
    store: Store,
    db: TestDb,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(kind: DbKind) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(kind, dir.path()).await;
        let store = Store::connect(&db.url, Duration::from_secs(5))
            .await
            .unwrap();
        Fixture {
            store,
            db,
            _dir: dir,
        }
    }

    async fn task(&self) -> Uuid {
        let id = Uuid::new_v4();
        self.store.insert(id, None, 10).await.unwrap();
        id
    }

    async fn report(
        &self,
        id: Uuid,
        event: &WorkerEvent,
        worker: Option<&str>,
        lease: Duration,
    ) -> Option<EventAck> {
        self.store
            .apply_report(id, event, worker, lease)
            .await
            .unwrap()
    }

    async fn finish(self) {
        self.store.close().await;
        self.db.drop().await;
    }
}

async fn expire() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn a_live_lease_keeps_other_workers_out(kind: DbKind) {
    use TaskStatus::*;
    let f = Fixture::new(kind).await;
    let (a, b) = (Some("worker-a"), Some("worker-b"));
    let id = f.task().await;
    assert_eq!(
        f.report(id, &WorkerEvent::Started, a, LONG).await,
        applied(Processing)
    );
    assert_eq!(
        f.report(id, &WorkerEvent::Started, a, LONG).await,
        applied(Processing)
    );
    assert_eq!(
        f.report(id, &WorkerEvent::Started, b, LONG).await,
        elsewhere(Processing)
    );
    assert_eq!(
        f.report(id, &progress(0.9), b, LONG).await,
        elsewhere(Processing)
    );
    assert_eq!(
        f.report(id, &failed(), b, LONG).await,
        elsewhere(Processing)
    );
    let task = f.store.get(id).await.unwrap().unwrap();
    assert_eq!((task.status, task.progress_permille), (Processing, 0));
    assert_eq!(
        f.report(id, &progress(0.5), a, LONG).await,
        applied(Processing)
    );
    assert_eq!(
        f.store.get(id).await.unwrap().unwrap().progress_permille,
        500
    );
    // An older worker's reports carry no id: applied as before, without a lease check.
    assert_eq!(
        f.report(id, &progress(0.25), None, LONG).await,
        applied(Processing)
    );
    assert_eq!(
        f.store.get(id).await.unwrap().unwrap().progress_permille,
        250
    );
    // DONE is accepted from anyone; a finished task answers its status, never elsewhere.
    assert_eq!(f.report(id, &DONE, b, LONG).await, applied(Done));
    assert_eq!(
        f.report(id, &WorkerEvent::Started, b, LONG).await,
        applied(Done)
    );
    assert_eq!(f.report(id, &failed(), a, LONG).await, applied(Done));
    assert_eq!(
        f.report(Uuid::new_v4(), &WorkerEvent::Started, a, LONG)
            .await,
        None
    );

    // The owner fails its own task.
    let own = f.task().await;
    f.report(own, &WorkerEvent::Started, a, LONG).await;
    assert_eq!(f.report(own, &failed(), a, LONG).await, applied(Failed));
    // No worker holds a RECEIVED task: anyone may fail it.
    let fresh = f.task().await;
    assert_eq!(f.report(fresh, &failed(), b, LONG).await, applied(Failed));
    f.finish().await;
}

async fn an_expired_or_released_lease_is_taken_over(kind: DbKind) {
    use TaskStatus::*;
    let f = Fixture::new(kind).await;
    let (a, b) = (Some("worker-a"), Some("worker-b"));
    let id = f.task().await;
    f.report(id, &WorkerEvent::Started, a, SHORT).await;
    expire().await;
    assert_eq!(
        f.report(id, &WorkerEvent::Started, b, LONG).await,
        applied(Processing)
    );
    // The silent worker is told to stop at its next report.
    assert_eq!(
        f.report(id, &progress(0.5), a, LONG).await,
        elsewhere(Processing)
    );
    // Released: the next worker starts at once; a release by a non-owner changes nothing.
    assert_eq!(
        f.report(id, &WorkerEvent::Released, a, LONG).await,
        applied(Processing)
    );
    assert_eq!(
        f.report(id, &WorkerEvent::Started, a, LONG).await,
        elsewhere(Processing)
    );
    assert_eq!(
        f.report(id, &WorkerEvent::Released, b, LONG).await,
        applied(Processing)
    );
    assert_eq!(
        f.report(id, &WorkerEvent::Started, a, LONG).await,
        applied(Processing)
    );
    // A FAILED after the owner's lease expired is accepted.
    let late = f.task().await;
    f.report(late, &WorkerEvent::Started, a, SHORT).await;
    expire().await;
    assert_eq!(f.report(late, &failed(), b, LONG).await, applied(Failed));
    f.finish().await;
}

async fn the_keeper_reclaims_expired_leases_only(kind: DbKind) {
    let f = Fixture::new(kind).await;
    let a = Some("worker-a");
    let (silent, alive, released) = (f.task().await, f.task().await, f.task().await);
    for id in [silent, alive, released] {
        f.report(id, &WorkerEvent::Started, a, SHORT).await;
    }
    f.report(released, &WorkerEvent::Released, a, LONG).await;
    expire().await;
    f.report(alive, &progress(0.5), a, LONG).await;
    let expired = f.store.expired_leases().await.unwrap();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!((expired[0].id, expired[0].earlier_expiries), (silent, 0));
    assert!(!f.store.reclaim_lease(alive).await.unwrap());
    assert!(f.store.reclaim_lease(silent).await.unwrap());
    assert!(
        !f.store.reclaim_lease(silent).await.unwrap(),
        "reclaimed twice"
    );
    assert!(f.store.expired_leases().await.unwrap().is_empty());
    // Not republished after all: expired again, the expiry not counted.
    f.store.unreclaim_lease(silent).await.unwrap();
    expire().await;
    let expired = f.store.expired_leases().await.unwrap();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!((expired[0].id, expired[0].earlier_expiries), (silent, 0));
    assert!(f.store.reclaim_lease(silent).await.unwrap());
    // Republished: the next worker takes it.
    f.report(silent, &WorkerEvent::Started, Some("worker-b"), SHORT)
        .await;
    expire().await;
    assert_eq!(
        f.store.expired_leases().await.unwrap()[0].earlier_expiries,
        1
    );
    assert!(f.store.abandon(silent, "abandoned").await.unwrap());
    let task = f.store.get(silent).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error.as_deref(), Some("abandoned"));
    assert!(!f.store.abandon(alive, "abandoned").await.unwrap());
    assert_eq!(
        f.store.get(alive).await.unwrap().unwrap().status,
        TaskStatus::Processing
    );
    f.finish().await;
}

#[tokio::test]
async fn a_live_lease_keeps_other_workers_out_on_sqlite() {
    a_live_lease_keeps_other_workers_out(DbKind::Sqlite).await;
}

#[tokio::test]
async fn a_live_lease_keeps_other_workers_out_on_mariadb() {
    a_live_lease_keeps_other_workers_out(DbKind::MariaDb).await;
}

#[tokio::test]
async fn a_live_lease_keeps_other_workers_out_on_postgres() {
    a_live_lease_keeps_other_workers_out(DbKind::Postgres).await;
}

#[tokio::test]
async fn an_expired_or_released_lease_is_taken_over_on_sqlite() {
    an_expired_or_released_lease_is_taken_over(DbKind::Sqlite).await;
}

#[tokio::test]
async fn an_expired_or_released_lease_is_taken_over_on_mariadb() {
    an_expired_or_released_lease_is_taken_over(DbKind::MariaDb).await;
}

#[tokio::test]
async fn an_expired_or_released_lease_is_taken_over_on_postgres() {
    an_expired_or_released_lease_is_taken_over(DbKind::Postgres).await;
}

#[tokio::test]
async fn the_keeper_reclaims_expired_leases_only_on_sqlite() {
    the_keeper_reclaims_expired_leases_only(DbKind::Sqlite).await;
}

#[tokio::test]
async fn the_keeper_reclaims_expired_leases_only_on_mariadb() {
    the_keeper_reclaims_expired_leases_only(DbKind::MariaDb).await;
}

#[tokio::test]
async fn the_keeper_reclaims_expired_leases_only_on_postgres() {
    the_keeper_reclaims_expired_leases_only(DbKind::Postgres).await;
}

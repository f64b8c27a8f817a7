//! The one clock: every window, minute boundary and age check reads time here, so tests can
//! drive the whole service with a fake clock that moves only when told to. Tasks that run on
//! recmeter's time (checkpoints, evaluations, schedules) take their ticks here too
//! ([`Clock::ticks`]): they follow the system clock normally, and under the fake clock they
//! fire when it is advanced, and [`Clock::advance_and_settle`] returns once every task due has
//! run. A task woken by an event rather than by time (a delivery queued) takes a [`Nudge`]
//! from its ticks: the event marks it due, so a test's advance also waits for that work.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Nanoseconds in one minute.
pub const MINUTE_NANOS: u64 = 60 * 1_000_000_000;

/// Source of "now" for the whole process.
#[derive(Debug)]
pub enum Clock {
    /// Wall-clock time.
    System,
    /// Test clock: starts at a fixed instant and moves only through [`Clock::advance`].
    Fake(FakeClock),
}

/// The fake clock's time, and the tasks ticking on it.
#[derive(Debug, Default)]
pub struct FakeClock {
    nanos: AtomicU64,
    /// Each ticking task: the tick it waits for, or `None` while it runs a tick.
    tasks: parking_lot::Mutex<HashMap<u64, Option<u64>>>,
    next_task: AtomicU64,
    /// Woken when the time moves.
    advanced: Notify,
    /// Woken when a task starts or finishes a tick, or goes away.
    settled: Notify,
}

impl FakeClock {
    /// Whether every task waits for a tick after `now`.
    fn settled_at(&self, now: u64) -> bool {
        self.tasks
            .lock()
            .values()
            .all(|due| due.is_some_and(|d| d > now))
    }
}

/// Periodic ticks on recmeter's clock, from [`Clock::ticks`].
#[derive(Debug)]
pub struct Ticks {
    clock: Arc<Clock>,
    period: u64,
    /// The next tick, Unix nanoseconds.
    due: u64,
    /// The task's number on the fake clock.
    id: u64,
    /// On the system clock, the next tick on the monotonic clock, so a step of the wall clock
    /// neither stalls nor hurries the ticks.
    deadline: tokio::time::Instant,
    /// Set by [`Nudge::nudge`]: the next `tick` returns at once.
    nudged: Arc<Nudged>,
}

#[derive(Debug, Default)]
struct Nudged {
    set: std::sync::atomic::AtomicBool,
    wake: Notify,
}

/// Wakes a task waiting in [`Ticks::tick`] before its next tick, from [`Ticks::nudge`]. Under
/// the fake clock the task counts as due from the nudge until it has run and waits again, so
/// [`Clock::advance_and_settle`] waits for work that a tick's work set off in another task.
#[derive(Debug, Clone)]
pub struct Nudge {
    clock: Arc<Clock>,
    id: u64,
    nudged: Arc<Nudged>,
}

impl Nudge {
    /// Makes the task's next (or current) wait return at once.
    pub fn nudge(&self) {
        if let Clock::Fake(fake) = &*self.clock {
            // Under the task table's lock, so a settle either sees the task due or finds it
            // waiting with the flag set.
            let mut tasks = fake.tasks.lock();
            self.nudged.set.store(true, Ordering::Release);
            if let Some(due @ Some(_)) = tasks.get_mut(&self.id) {
                *due = Some(0);
            }
        } else {
            self.nudged.set.store(true, Ordering::Release);
        }
        self.nudged.wake.notify_one();
    }
}

impl Ticks {
    /// Waits for the next tick and returns the clock's time then. Ticks missed in one jump of
    /// the clock, or while the task was busy, make one firing. Under the fake clock the task
    /// counts as running its tick from the return until it calls `tick` again, and
    /// [`Clock::advance_and_settle`] waits for it.
    pub async fn tick(&mut self) -> u64 {
        loop {
            let now = match &*self.clock {
                Clock::System => {
                    if self.nudged.set.swap(false, Ordering::AcqRel) {
                        return self.clock.now_nanos();
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(self.deadline) => {}
                        () = self.nudged.wake.notified() => continue,
                    }
                    let late = tokio::time::Instant::now().saturating_duration_since(self.deadline);
                    let period = Duration::from_nanos(self.period);
                    let missed = u32::try_from(late.as_nanos() / u128::from(self.period))
                        .unwrap_or(u32::MAX);
                    self.deadline += period.saturating_mul(missed.saturating_add(1));
                    return self.clock.now_nanos();
                }
                Clock::Fake(fake) => {
                    let advanced = fake.advanced.notified();
                    tokio::pin!(advanced);
                    advanced.as_mut().enable();
                    let ready = {
                        let mut tasks = fake.tasks.lock();
                        let now = fake.nanos.load(Ordering::Acquire);
                        if self.nudged.set.swap(false, Ordering::AcqRel) {
                            tasks.insert(self.id, None);
                            drop(tasks);
                            fake.settled.notify_waiters();
                            return now;
                        }
                        if now >= self.due {
                            tasks.insert(self.id, None);
                            Some(now)
                        } else {
                            tasks.insert(self.id, Some(self.due));
                            None
                        }
                    };
                    fake.settled.notify_waiters();
                    match ready {
                        Some(now) => now,
                        None => {
                            tokio::select! {
                                () = advanced => {}
                                () = self.nudged.wake.notified() => {}
                            }
                            continue;
                        }
                    }
                }
            };
            // The first tick after `now`: missed ones coalesce into this firing.
            let missed = (now - self.due) / self.period;
            self.due = self
                .due
                .saturating_add(self.period.saturating_mul(missed.saturating_add(1)));
            return now;
        }
    }
}

impl Ticks {
    /// A handle that wakes this task early, from anywhere.
    pub fn nudge(&self) -> Nudge {
        Nudge {
            clock: self.clock.clone(),
            id: self.id,
            nudged: self.nudged.clone(),
        }
    }
}

impl Drop for Ticks {
    fn drop(&mut self) {
        if let Clock::Fake(fake) = &*self.clock {
            fake.tasks.lock().remove(&self.id);
            fake.settled.notify_waiters();
        }
    }
}

impl Clock {
    /// A fake clock starting at `start`.
    pub fn fake(start: SystemTime) -> Self {
        Clock::Fake(FakeClock {
            nanos: AtomicU64::new(unix_nanos(start)),
            ..FakeClock::default()
        })
    }

    /// Ticks every `period` (at least a millisecond) on this clock, the first a period from now.
    pub fn ticks(self: &Arc<Self>, period: Duration) -> Ticks {
        let period = u64::try_from(period.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1_000_000);
        let first = self.now_nanos().saturating_add(period);
        self.ticks_from(first, period)
    }

    /// Ticks every `period` from the instant `first` on: a schedule such as every Monday at
    /// 06:00. A `first` already past fires at once, the ticks missed since making one firing.
    pub fn ticks_at(self: &Arc<Self>, first: SystemTime, period: Duration) -> Ticks {
        let period = u64::try_from(period.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1_000_000);
        self.ticks_from(unix_nanos(first), period)
    }

    /// Sleeps until the clock reads `at` or later: the system clock's time, or the fake
    /// clock's once a test advances it there. A task whose work after waking must finish
    /// before `/-/test/clock` answers holds [`Clock::ticks_at`] instead, across its work.
    pub async fn sleep_until(self: &Arc<Self>, at: SystemTime) {
        // One firing; the period only has to lie beyond any wait.
        self.ticks_at(at, Duration::from_secs(u64::from(u32::MAX)))
            .tick()
            .await;
    }

    fn ticks_from(self: &Arc<Self>, due: u64, period: u64) -> Ticks {
        let now = self.now_nanos();
        let id = match &**self {
            Clock::System => 0,
            Clock::Fake(fake) => {
                let id = fake.next_task.fetch_add(1, Ordering::Relaxed);
                fake.tasks.lock().insert(id, Some(due));
                id
            }
        };
        Ticks {
            clock: self.clone(),
            period,
            due,
            id,
            deadline: tokio::time::Instant::now() + Duration::from_nanos(due.saturating_sub(now)),
            nudged: Arc::default(),
        }
    }

    /// Current time in nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        match self {
            Clock::System => unix_nanos(SystemTime::now()),
            Clock::Fake(fake) => fake.nanos.load(Ordering::Acquire),
        }
    }

    /// Current time.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.now_nanos())
    }

    /// Whether this is the test clock.
    pub fn is_fake(&self) -> bool {
        matches!(self, Clock::Fake(_))
    }

    /// Moves a fake clock forward; returns the new time, or `None` for the system clock.
    pub fn advance(&self, by: Duration) -> Option<SystemTime> {
        match self {
            Clock::System => None,
            Clock::Fake(fake) => {
                let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
                let new = {
                    // Under the task table's lock, so a task checks the time and starts waiting
                    // with nothing in between.
                    let _tasks = fake.tasks.lock();
                    let old = fake
                        .nanos
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            Some(n.saturating_add(by))
                        })
                        .unwrap_or_else(|n| n);
                    old.saturating_add(by)
                };
                fake.advanced.notify_waiters();
                Some(UNIX_EPOCH + Duration::from_nanos(new))
            }
        }
    }

    /// Moves a fake clock forward and returns once every task due by the new time has run
    /// its tick, or `Err` with the new time if some task still runs after `patience`; `None`
    /// for the system clock.
    pub async fn advance_and_settle(
        &self,
        by: Duration,
        patience: Duration,
    ) -> Option<Result<SystemTime, SystemTime>> {
        let Clock::Fake(fake) = self else {
            return None;
        };
        let new = self.advance(by)?;
        let now = unix_nanos(new);
        let settle = async {
            loop {
                let settled = fake.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if fake.settled_at(now) {
                    return;
                }
                settled.await;
            }
        };
        Some(match tokio::time::timeout(patience, settle).await {
            Ok(()) => Ok(new),
            Err(_) => Err(new),
        })
    }
}

/// Nanoseconds since the epoch; instants before it read as 0.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Start of the minute containing `nanos`, as a minute index since the epoch.
pub fn minute_of(nanos: u64) -> u64 {
    nanos / MINUTE_NANOS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_advanced() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Clock::fake(start);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(60));
        assert_eq!(clock.now(), start + Duration::from_secs(60));
        assert!(Clock::System.advance(Duration::from_secs(1)).is_none());
    }

    #[test]
    fn minute_boundaries() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(MINUTE_NANOS - 1), 0);
        assert_eq!(minute_of(MINUTE_NANOS), 1);
    }

    /// Sleeping until an instant wakes once the fake clock reads it, not before; a schedule
    /// whose first instant is past fires at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeping_until_an_instant_wakes_when_the_fake_clock_gets_there() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = Arc::new(Clock::fake(start));
        let woke = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (clock, woke) = (clock.clone(), woke.clone());
            async move {
                clock.sleep_until(start + Duration::from_secs(90)).await;
                woke.store(true, Ordering::SeqCst);
            }
        });
        let patience = Duration::from_secs(10);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = clock
            .advance_and_settle(Duration::from_secs(60), patience)
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!woke.load(Ordering::SeqCst), "not there yet");
        let _ = clock
            .advance_and_settle(Duration::from_secs(30), patience)
            .await;
        tokio::time::timeout(patience, task).await.unwrap().unwrap();
        assert!(woke.load(Ordering::SeqCst));
        let mut weekly = clock.ticks_at(start, Duration::from_secs(7 * 86_400));
        assert_eq!(weekly.tick().await, clock.now_nanos());
    }

    /// A 30 s task on the fake clock: one firing when the clock jumps 2 minutes (the missed
    /// ticks coalesce), then one per 30 s step; each advance returns after the firing it was
    /// due.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ticks_on_the_fake_clock_fire_and_settle() {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        let fired = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut ticks = clock.ticks(Duration::from_secs(30));
        let task = tokio::spawn({
            let fired = fired.clone();
            async move {
                loop {
                    let at = ticks.tick().await;
                    // Work that takes a while, as a checkpoint does.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    fired.lock().push(at);
                }
            }
        });
        let patience = Duration::from_secs(10);
        let start = clock.now_nanos();
        clock
            .advance_and_settle(Duration::from_secs(120), patience)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *fired.lock(),
            [start + 120_000_000_000],
            "one firing for the jump"
        );
        for step in 1..=4u64 {
            clock
                .advance_and_settle(Duration::from_secs(30), patience)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(fired.lock().len() as u64, 1 + step, "one firing per step");
        }
        // A step short of the next tick fires nothing and returns at once.
        clock
            .advance_and_settle(Duration::from_secs(10), patience)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fired.lock().len(), 5);
        task.abort();
    }

    /// Extreme periods and advances saturate instead of overflowing.
    #[tokio::test]
    async fn extreme_periods_and_advances_saturate() {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        let mut ticks = clock.ticks(Duration::MAX);
        let patience = Duration::from_millis(100);
        let moved = clock
            .advance_and_settle(Duration::MAX, patience)
            .await
            .unwrap();
        // The tick is due and nothing runs it here: reported, at the saturated time.
        assert_eq!(
            moved.unwrap_err(),
            UNIX_EPOCH + Duration::from_nanos(u64::MAX)
        );
        assert_eq!(ticks.tick().await, u64::MAX);
        drop(ticks);
        let again = clock
            .advance_and_settle(Duration::from_secs(1), patience)
            .await;
        assert!(again.unwrap().is_ok());
    }

    /// A task still running past the patience is reported, not waited for forever; a task
    /// that went away is not waited for at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settling_is_bounded_and_forgets_tasks_that_ended() {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        let mut ticks = clock.ticks(Duration::from_secs(1));
        let stuck = tokio::spawn(async move {
            ticks.tick().await;
            std::future::pending::<()>().await;
        });
        let outcome = clock
            .advance_and_settle(Duration::from_secs(5), Duration::from_millis(200))
            .await
            .unwrap();
        assert!(outcome.is_err(), "the stuck task is reported");
        stuck.abort();
        let _ = stuck.await;
        let outcome = clock
            .advance_and_settle(Duration::from_secs(5), Duration::from_millis(200))
            .await
            .unwrap();
        assert!(outcome.is_ok(), "its ticks went away with it");
        assert!(
            Clock::System
                .advance_and_settle(Duration::from_secs(1), Duration::from_secs(1))
                .await
                .is_none()
        );
    }

    /// A nudge from another task's tick makes the nudged task due: the advance returns only
    /// after it has run, and its periodic ticks stay where they were.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nudged_task_runs_before_the_advance_settles() {
        let clock = Arc::new(Clock::fake(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        let mut evaluations = clock.ticks(Duration::from_secs(30));
        let mut deliveries = clock.ticks(Duration::from_secs(3_600));
        let nudge = deliveries.nudge();
        let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let evaluator = tokio::spawn(async move {
            loop {
                evaluations.tick().await;
                nudge.nudge();
            }
        });
        let deliverer = tokio::spawn({
            let delivered = delivered.clone();
            async move {
                loop {
                    deliveries.tick().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    delivered.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let patience = Duration::from_secs(10);
        for step in 1..=3 {
            clock
                .advance_and_settle(Duration::from_secs(30), patience)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                delivered.load(Ordering::SeqCst),
                step,
                "ran before settling"
            );
        }
        evaluator.abort();
        deliverer.abort();
        // On the system clock a nudge wakes the task long before its hourly tick.
        let clock = Arc::new(Clock::System);
        let mut hourly = clock.ticks(Duration::from_secs(3_600));
        hourly.nudge().nudge();
        tokio::time::timeout(patience, hourly.tick()).await.unwrap();
    }

    /// On the system clock, ticks follow real time.
    #[tokio::test]
    async fn ticks_on_the_system_clock_follow_real_time() {
        let clock = Arc::new(Clock::System);
        let mut ticks = clock.ticks(Duration::from_millis(20));
        let before = unix_nanos(SystemTime::now());
        let first = ticks.tick().await;
        let second = ticks.tick().await;
        assert!(before < first && first < second);
    }
}

//! A oneshot from a worker thread to a task on a core: the worker sends one value, the task
//! awaits it. Built on `Arc<Mutex<…>>` and a `Waker` (monoio runs with its `sync` feature, so a
//! waker may be woken from another thread). A sender dropped unsent sends its `gone` value, so
//! a worker that dies never leaves its task waiting for a deadline.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

fn lock<T>(slot: &Mutex<Slot<T>>) -> MutexGuard<'_, Slot<T>> {
    // A poisoned slot still holds a consistent Option: the data is usable.
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The worker's half.
pub(crate) struct Sender<T> {
    slot: Arc<Mutex<Slot<T>>>,
    /// What a sender dropped unsent delivers; `None` once sent.
    gone: Option<fn() -> T>,
}

/// The task's half: a future of the value.
pub(crate) struct Receiver<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

/// A oneshot whose sender, dropped unsent, sends `gone()`.
pub(crate) fn channel<T>(gone: fn() -> T) -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot { value: None, waker: None }));
    (Sender { slot: Arc::clone(&slot), gone: Some(gone) }, Receiver { slot })
}

impl<T> Sender<T> {
    /// Sends the value and wakes the task awaiting it.
    pub(crate) fn send(mut self, value: T) {
        self.gone = None;
        self.deliver(value);
    }

    /// Whether the task stopped waiting (its receiver was dropped): the value would be lost,
    /// so the work making it need not be done.
    pub(crate) fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.slot) == 1
    }

    fn deliver(&self, value: T) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.value = Some(value);
            slot.waker.take()
        };
        // Woken outside the lock: the task may poll at once.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(gone) = self.gone.take() {
            self.deliver(gone());
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = lock(&self.slot);
        match slot.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                match &slot.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<T>(receiver: &mut Receiver<T>, waker: &Waker) -> Poll<T> {
        Pin::new(receiver).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_value_sent_from_another_thread_wakes_the_task_once() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let (sender, mut receiver) = channel(|| 0u32);
        assert_eq!(poll(&mut receiver, &waker), Poll::Pending);
        // Polled again with the same waker: still one registration.
        assert_eq!(poll(&mut receiver, &waker), Poll::Pending);
        std::thread::spawn(move || sender.send(7)).join().unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut receiver, &waker), Poll::Ready(7));
    }

    #[test]
    fn a_sender_knows_when_its_receiver_is_gone() {
        let (sender, receiver) = channel(|| 0u32);
        assert!(!sender.is_abandoned());
        drop(receiver);
        assert!(sender.is_abandoned());
        sender.send(1);
    }

    #[test]
    fn a_sender_dropped_unsent_sends_its_gone_value() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let (sender, mut receiver) = channel(|| "gone");
        assert_eq!(poll(&mut receiver, &waker), Poll::Pending);
        std::thread::spawn(move || drop(sender)).join().unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut receiver, &waker), Poll::Ready("gone"));
        // Sent before any poll: ready at once, and `gone` is not sent after it.
        let (sender, mut receiver) = channel(|| "gone");
        sender.send("sent");
        assert_eq!(poll(&mut receiver, &waker), Poll::Ready("sent"));
    }
}

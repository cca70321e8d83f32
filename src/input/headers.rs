//! Kafka record headers read without panicking. rdkafka's `Headers::try_get`
//! (and `iter`) unwrap the UTF-8 conversion of each header's key, so one
//! record whose header key is not UTF-8 (any client but Java's can write
//! one) would panic the thread that reads it, on every restart: a poison
//! pill. Here keys are bytes.

use std::ffi::CStr;
use std::marker::PhantomData;

use rdkafka::bindings as rdsys;
use rdkafka::message::BorrowedHeaders;

/// The headers of a record in order: each key's bytes (up to a NUL byte, as
/// librdkafka keeps keys) and value (`None`: a null value).
pub fn each(headers: &BorrowedHeaders) -> Iter<'_> {
    // A `&BorrowedHeaders` is librdkafka's `rd_kafka_headers_t` pointer;
    // rdkafka converts it the same way (`BorrowedHeaders::as_native_ptr`).
    let native = headers as *const BorrowedHeaders as *const rdsys::rd_kafka_headers_t;
    // SAFETY: `native` is a live headers list, borrowed for `'_`.
    unsafe { Iter::new(native) }
}

/// Iterator of [`each`].
pub struct Iter<'h> {
    native: *const rdsys::rd_kafka_headers_t,
    next: usize,
    count: usize,
    headers: PhantomData<&'h BorrowedHeaders>,
}

impl Iter<'_> {
    /// # Safety
    /// `native` must point to a headers list that lives, unchanged, for
    /// the iterator's lifetime.
    unsafe fn new(native: *const rdsys::rd_kafka_headers_t) -> Self {
        Iter {
            native,
            next: 0,
            count: rdsys::rd_kafka_header_cnt(native),
            headers: PhantomData,
        }
    }
}

impl<'h> Iterator for Iter<'h> {
    type Item = (&'h [u8], Option<&'h [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.count {
            let idx = self.next;
            self.next += 1;
            let mut name = std::ptr::null();
            let mut value = std::ptr::null();
            let mut size = 0usize;
            // SAFETY: the list outlives 'h (see `new`); librdkafka returns
            // pointers into it: a NUL-terminated name and `size` value bytes.
            unsafe {
                let err = rdsys::rd_kafka_header_get_all(
                    self.native,
                    idx,
                    &mut name,
                    &mut value,
                    &mut size,
                );
                if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                    continue;
                }
                let key = CStr::from_ptr(name).to_bytes();
                let value = (!value.is_null())
                    .then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
                return Some((key, value));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, Headers, OwnedHeaders};

    #[test]
    fn reads_keys_and_values_as_bytes() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_id",
                value: Some("e-1"),
            })
            .insert(Header::<&str> {
                key: "empty",
                value: None,
            });
        let read: Vec<_> = each(headers.as_borrowed()).collect();
        assert_eq!(
            read,
            vec![(&b"ce_id"[..], Some(&b"e-1"[..])), (&b"empty"[..], None)]
        );
    }

    /// A key that is not UTF-8 is read; rdkafka's own accessor panics on it.
    #[test]
    fn a_key_that_is_not_utf8_does_not_panic() {
        // SAFETY: a list made, filled, read and destroyed here.
        unsafe {
            let native = rdsys::rd_kafka_headers_new(2);
            let key = b"bad\xff";
            let value = b"v";
            rdsys::rd_kafka_header_add(
                native,
                key.as_ptr().cast(),
                key.len() as isize,
                value.as_ptr().cast(),
                value.len() as isize,
            );
            let read: Vec<_> = Iter::new(native).collect();
            assert_eq!(read, vec![(&key[..], Some(&value[..]))]);
            let borrowed = &*(native as *const BorrowedHeaders);
            assert_eq!(borrowed.count(), 1);
            assert!(std::panic::catch_unwind(|| borrowed.try_get(0)).is_err());
            rdsys::rd_kafka_headers_destroy(native);
        }
    }
}

//! Straightforward engine: the csv crate, one BTreeMap, no spilling. The baseline the fast
//! engine is checked against.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use super::output::{push_row, write_header};
use super::validate::{PackedDate, check_header, check_record, date_string, wrong_field_count};
use crate::error::InvalidRow;
use crate::{Config, Control, Error, Summary};

pub(crate) fn run(
    input: impl Read,
    out: &mut (dyn Write + Send),
    config: &Config,
    control: &Control,
) -> Result<Summary, Error> {
    let read_err = |source| Error::Read {
        path: PathBuf::from("<input>"),
        source,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::ByteRecord::new();
    let mut groups: BTreeMap<(Vec<u8>, PackedDate), u64> = BTreeMap::new();
    let mut summary = Summary::default();
    let mut header_seen = false;
    let mut last_pos = 0u64;
    loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| match e.kind() {
                csv::ErrorKind::Io(_) => match e.into_kind() {
                    csv::ErrorKind::Io(io) => read_err(io),
                    _ => unreachable!(),
                },
                _ => Error::Invalid(InvalidRow {
                    line: e.position().map_or(0, |p| p.line()),
                    field: None,
                    reason: e.to_string(),
                }),
            })?;
        if !more {
            break;
        }
        if control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let pos = record.position().map_or(0, |p| p.byte());
        control.progress().add_read(pos - last_pos, 1);
        last_pos = pos;
        let line = record.position().map_or(0, |p| p.line());
        let fields: Vec<&[u8]> = record.iter().collect();
        if !header_seen {
            header_seen = true;
            let mut fields = fields;
            if let Some(first) = fields.first_mut() {
                *first = first.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(first);
            }
            check_header(&fields).map_err(Error::Invalid)?;
            continue;
        }
        summary.rows_read += 1;
        let checked = if fields.len() == 3 {
            check_record(line, fields[0], fields[1], fields[2])
        } else {
            Err(wrong_field_count(line, fields.len()))
        };
        match checked {
            Ok((date, plays)) => {
                let sum = groups.entry((fields[0].to_vec(), date)).or_insert(0);
                *sum = sum.checked_add(plays).ok_or_else(|| Error::SumOverflow {
                    song: String::from_utf8_lossy(fields[0]).into_owned(),
                    date: date_string(date),
                })?;
            }
            Err(invalid) if config.skip_invalid => {
                summary.rows_skipped += 1;
                if summary.invalid_samples.len() < config.max_reported_invalid {
                    summary.invalid_samples.push(invalid.to_string());
                }
            }
            Err(invalid) => return Err(Error::Invalid(invalid)),
        }
    }
    if !header_seen {
        return Err(Error::EmptyInput);
    }
    let write_err = |source| Error::Write {
        path: PathBuf::from("<output>"),
        source,
    };
    let mut buf = Vec::with_capacity(1 << 16);
    write_header(&mut buf).map_err(write_err)?;
    for ((song, date), plays) in &groups {
        push_row(&mut buf, song, *date, *plays);
        if buf.len() > 1 << 16 {
            out.write_all(&buf).map_err(write_err)?;
            summary.output_bytes += buf.len() as u64;
            buf.clear();
        }
    }
    out.write_all(&buf).map_err(write_err)?;
    out.flush().map_err(write_err)?;
    summary.output_bytes += buf.len() as u64;
    summary.groups_written = groups.len() as u64;
    summary.input_bytes = last_pos;
    Ok(summary)
}

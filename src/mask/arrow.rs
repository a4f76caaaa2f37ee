//! Arrow IPC streams masked in place: the stream is walked message by message (continuation
//! marker, metadata length, flatbuffer `Message` read with arrow-ipc's generated code, body),
//! and record batch buffers are overwritten where they lie: text keeps its byte length,
//! numbers, dates and timestamps become zero (the epoch), booleans false, and NULL is written
//! in the validity bitmap with the field node's null count fixed in the metadata. In the schema
//! message only a field's name may change (masked in place, at its length, when it holds what
//! the profile masks: a dynamic `PIVOT` names columns after values), so Snowflake's field
//! metadata (`logicalType`, `precision`, `scale`, `charLength`) stays byte for byte. Anything
//! not understood is refused: body compression, dictionaries, unions, views, big-endian
//! streams.

use std::ops::Range;

use arrow_ipc::{DateUnit, Endianness, Field, IntervalUnit, MessageHeader, Precision, Type, root_as_message};

use super::detect::DetectorKind;
use super::json::{MaskCtx, is_json_text};
use super::plan::{COLUMNS_MAX, Column, ColumnPlan, PlannedColumn, ValueType};
use super::rules::{RuleKind, Style};
#[cfg(target_arch = "x86_64")]
use super::simd::features;
use super::text::{
    MatchCursor, Span, Views, apply_spans_fixed_len, detect_short, detect_spans, fill, free_text_spans, settle_spans,
    stats, type_valid_text,
};
use super::{MaskError, MaskReport, Scratch};

/// The largest metadata (flatbuffer) of one message.
const METADATA_BYTES_MAX: usize = 16 << 20;
/// The most fields (nested ones included) in a schema.
const FIELDS_MAX: usize = 100_000;
/// The deepest field nesting followed.
const DEPTH_MAX: usize = 32;

fn refuse(offset: usize, what: &'static str) -> MaskError {
    MaskError::Arrow { offset, what }
}

/// How a field's values are laid out in a record batch, as far as masking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Null,
    Bool,
    Fixed(usize),
    Utf8 { large: bool },
    Binary { large: bool },
    Struct,
    List { large: bool },
    FixedSizeList,
}

impl Layout {
    fn buffers(self) -> usize {
        match self {
            Layout::Null => 0,
            Layout::Struct | Layout::FixedSizeList => 1,
            Layout::Bool | Layout::Fixed(_) | Layout::List { .. } => 2,
            Layout::Utf8 { .. } | Layout::Binary { .. } => 3,
        }
    }
}

/// A schema field, flattened in preorder.
#[derive(Debug, Clone)]
pub(crate) struct FieldDesc {
    layout: Layout,
    nullable: bool,
    /// How many fields (itself included) its subtree spans in preorder.
    subtree: usize,
    /// Whether it is the `timezone` child of a TIMESTAMP_TZ struct (kept: any offset is valid).
    timezone: bool,
    /// Whether its metadata says a whole number (FIXED, scale 0): nested in a structured
    /// column, it is read by the card detector as a column's own is.
    whole_number: bool,
}

/// One array of a record batch: its node and its buffers, as absolute ranges in the stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct ArrayView {
    length: usize,
    null_count: usize,
    /// Where the node's null count (i64) sits in the metadata.
    null_count_at: usize,
    validity: Range<usize>,
    offsets: Range<usize>,
    values: Range<usize>,
}

/// Reusable state of the Arrow walk.
#[derive(Default)]
pub(crate) struct ArrowScratch {
    fields: Vec<FieldDesc>,
    roots: Vec<usize>,
    arrays: Vec<ArrayView>,
    /// A record batch's buffers, sorted, to check that none overlaps another.
    buffers: Vec<Range<usize>>,
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn metadata_value<'a>(field: &Field<'a>, key: &str) -> Option<&'a str> {
    field.custom_metadata()?.iter().find(|kv| kv.key() == Some(key)).and_then(|kv| kv.value())
}

fn layout_of(field: &Field<'_>, offset: usize) -> Result<Layout, MaskError> {
    let unsupported = |what| refuse(offset, what);
    let width = |bits: i32| match bits {
        8 | 16 | 32 | 64 | 128 | 256 => Ok(Layout::Fixed(bits as usize / 8)),
        _ => Err(unsupported("an unsupported bit width")),
    };
    Ok(match field.type_type() {
        Type::Null => Layout::Null,
        Type::Bool => Layout::Bool,
        Type::Int => width(field.type_as_int().ok_or(unsupported("a malformed Int type"))?.bitWidth())?,
        Type::FloatingPoint => match field.type_as_floating_point().map(|f| f.precision()) {
            Some(Precision::HALF) => Layout::Fixed(2),
            Some(Precision::SINGLE) => Layout::Fixed(4),
            Some(Precision::DOUBLE) => Layout::Fixed(8),
            _ => return Err(unsupported("a malformed FloatingPoint type")),
        },
        Type::Decimal => width(field.type_as_decimal().ok_or(unsupported("a malformed Decimal type"))?.bitWidth())?,
        Type::Date => match field.type_as_date().map(|d| d.unit()) {
            Some(DateUnit::DAY) => Layout::Fixed(4),
            Some(DateUnit::MILLISECOND) => Layout::Fixed(8),
            _ => return Err(unsupported("a malformed Date type")),
        },
        Type::Time => width(field.type_as_time().ok_or(unsupported("a malformed Time type"))?.bitWidth())?,
        Type::Timestamp | Type::Duration => Layout::Fixed(8),
        Type::Interval => match field.type_as_interval().map(|i| i.unit()) {
            Some(IntervalUnit::YEAR_MONTH) => Layout::Fixed(4),
            Some(IntervalUnit::DAY_TIME) => Layout::Fixed(8),
            Some(IntervalUnit::MONTH_DAY_NANO) => Layout::Fixed(16),
            _ => return Err(unsupported("a malformed Interval type")),
        },
        Type::FixedSizeBinary => {
            let width =
                field.type_as_fixed_size_binary().ok_or(unsupported("a malformed FixedSizeBinary"))?.byteWidth();
            if width <= 0 {
                return Err(unsupported("a FixedSizeBinary without width"));
            }
            Layout::Fixed(width as usize)
        }
        Type::Utf8 => Layout::Utf8 { large: false },
        Type::LargeUtf8 => Layout::Utf8 { large: true },
        Type::Binary => Layout::Binary { large: false },
        Type::LargeBinary => Layout::Binary { large: true },
        Type::Struct_ => Layout::Struct,
        Type::List | Type::Map => Layout::List { large: false },
        Type::LargeList => Layout::List { large: true },
        Type::FixedSizeList => Layout::FixedSizeList,
        _ => return Err(unsupported("an unsupported Arrow type (union, view, run-end encoded)")),
    })
}

/// Snowflake's type name for a field: its `logicalType` metadata, else one inferred from Arrow.
fn type_name_of(field: &Field<'_>, layout: Layout) -> String {
    if let Some(logical) = metadata_value(field, "logicalType") {
        return logical.to_owned();
    }
    match (layout, field.type_type()) {
        (_, Type::Bool) => "BOOLEAN",
        (_, Type::FloatingPoint) => "REAL",
        (_, Type::Date) => "DATE",
        (_, Type::Time) => "TIME",
        (_, Type::Timestamp) => "TIMESTAMP_NTZ",
        (Layout::Binary { .. }, _) => "BINARY",
        (Layout::Fixed(_), _) => "FIXED",
        (Layout::Struct | Layout::List { .. } | Layout::FixedSizeList, _) => "OBJECT",
        _ => "TEXT",
    }
    .to_owned()
}

fn flatten_field(
    field: Field<'_>,
    depth: usize,
    timezone_parent: bool,
    fields: &mut Vec<FieldDesc>,
    offset: usize,
) -> Result<(), MaskError> {
    if depth > DEPTH_MAX {
        return Err(MaskError::Limit { what: "Arrow field nesting depth" });
    }
    if fields.len() >= FIELDS_MAX {
        return Err(MaskError::Limit { what: "Arrow fields in a schema" });
    }
    if field.dictionary().is_some() {
        return Err(refuse(offset, "a dictionary-encoded field"));
    }
    let layout = layout_of(&field, offset)?;
    let timezone = timezone_parent && field.name().is_some_and(|n| n.eq_ignore_ascii_case("timezone"));
    let is_tz_struct = layout == Layout::Struct
        && metadata_value(&field, "logicalType").is_some_and(|t| t.eq_ignore_ascii_case("TIMESTAMP_TZ"));
    let index = fields.len();
    let whole_number = matches!(layout, Layout::Fixed(_))
        && metadata_value(&field, "logicalType").is_some_and(|t| t.eq_ignore_ascii_case("FIXED"))
        && metadata_value(&field, "scale") == Some("0");
    fields.push(FieldDesc { layout, nullable: field.nullable(), subtree: 1, timezone, whole_number });
    let children = field.children().map(|c| c.len()).unwrap_or(0);
    let expected = match layout {
        Layout::Struct => None,
        Layout::List { .. } | Layout::FixedSizeList => Some(1),
        _ => Some(0),
    };
    if expected.is_some_and(|n| n != children) {
        return Err(refuse(offset, "a field with the wrong number of children"));
    }
    if let Some(list) = field.children() {
        for child in list.iter() {
            flatten_field(child, depth + 1, is_tz_struct, fields, offset)?;
        }
    }
    fields[index].subtree = fields.len() - index;
    Ok(())
}

/// Masks an Arrow IPC stream in place. `given` is the plan made from the answer's row type;
/// without it (an Arrow chunk fetched alone) the plan is made from the schema's own metadata,
/// with unknown tables (so table-specific rules apply). Returns the plan used.
pub(crate) fn mask_stream(
    ctx: &MaskCtx<'_>,
    buf: &mut [u8],
    given: Option<&ColumnPlan>,
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<ColumnPlan, MaskError> {
    let mut plan: Option<ColumnPlan> = None;
    let mut pos = 0;
    while pos < buf.len() {
        // A message: [0xFFFFFFFF] length metadata body; old streams omit the marker.
        let marker = read_u32(buf, pos).ok_or(refuse(pos, "a truncated message header"))?;
        let (meta_start, meta_len) = if marker == u32::MAX {
            (pos + 8, read_u32(buf, pos + 4).ok_or(refuse(pos, "a truncated message header"))? as usize)
        } else {
            (pos + 4, marker as usize)
        };
        if meta_len == 0 {
            // End of stream: nothing may follow it.
            if meta_start != buf.len() {
                return Err(refuse(meta_start, "bytes after the end-of-stream marker"));
            }
            break;
        }
        if meta_len > METADATA_BYTES_MAX || meta_start + meta_len > buf.len() {
            return Err(refuse(pos, "a message longer than the stream"));
        }
        let meta = meta_start..meta_start + meta_len;
        let message =
            root_as_message(&buf[meta.clone()]).map_err(|_| refuse(meta_start, "an invalid flatbuffer message"))?;
        let body_len =
            usize::try_from(message.bodyLength()).map_err(|_| refuse(meta_start, "a negative body length"))?;
        let body =
            meta.end..meta.end.checked_add(body_len).ok_or(refuse(meta_start, "a body longer than the stream"))?;
        if body.end > buf.len() {
            return Err(refuse(meta_start, "a body longer than the stream"));
        }
        match message.header_type() {
            MessageHeader::Schema => {
                if plan.is_some() {
                    return Err(refuse(meta_start, "a second schema"));
                }
                let schema = message.header_as_schema().ok_or(refuse(meta_start, "a malformed schema"))?;
                if schema.endianness() != Endianness::Little {
                    return Err(refuse(meta_start, "a big-endian stream"));
                }
                let arrow = &mut scratch.arrow;
                arrow.fields.clear();
                arrow.roots.clear();
                let mut columns = Vec::new();
                let mut names = Vec::new();
                if let Some(top) = schema.fields() {
                    if top.len() > COLUMNS_MAX {
                        return Err(MaskError::Limit { what: "Arrow columns" });
                    }
                    for field in top.iter() {
                        arrow.roots.push(arrow.fields.len());
                        let layout = layout_of(&field, meta_start)?;
                        if let Some(name) = field.name() {
                            // Where the name's bytes lie in the stream (a flatbuffer string is
                            // its bytes in place, length-prefixed), to mask them there.
                            let at = meta.start + (name.as_ptr() as usize - buf[meta.clone()].as_ptr() as usize);
                            names.push(at..at + name.len());
                        }
                        columns.push(Column {
                            name: field.name().unwrap_or_default().to_owned(),
                            table: None,
                            schema: None,
                            database: None,
                            type_name: type_name_of(&field, layout),
                            scale: metadata_value(&field, "scale").and_then(|s| s.parse().ok()),
                            nullable: field.nullable(),
                        });
                        flatten_field(field, 0, false, &mut arrow.fields, meta_start)?;
                    }
                }
                let chosen = match given {
                    Some(given) => given.clone(),
                    None => ctx.plan(&columns),
                };
                if chosen.columns.len() != arrow.roots.len() {
                    return Err(MaskError::ColumnCount { expected: chosen.columns.len(), found: arrow.roots.len() });
                }
                plan = Some(chosen);
                // A dynamic `PIVOT` names columns after values: the names are masked as free
                // text, in place and at the same length (so the flatbuffer stays as it is), once
                // the plan has been made from them. Nothing else in the schema changes.
                for name in names {
                    mask_free_text(ctx, &mut buf[name], scratch, report);
                }
            }
            MessageHeader::RecordBatch => {
                let batch = message.header_as_record_batch().ok_or(refuse(meta_start, "a malformed record batch"))?;
                if plan.is_none() {
                    return Err(refuse(meta_start, "a record batch before the schema"));
                }
                if batch.compression().is_some() {
                    return Err(refuse(meta_start, "a compressed record batch"));
                }
                if batch.variadicBufferCounts().is_some_and(|v| !v.is_empty()) {
                    return Err(refuse(meta_start, "variadic buffers"));
                }
                let nodes = batch.nodes().ok_or(refuse(meta_start, "a record batch without nodes"))?;
                let buffers = batch.buffers().ok_or(refuse(meta_start, "a record batch without buffers"))?;
                let arrow = &mut scratch.arrow;
                if nodes.len() != arrow.fields.len() {
                    return Err(refuse(meta_start, "a record batch whose nodes do not match the schema"));
                }
                let needed: usize = arrow.fields.iter().map(|f| f.layout.buffers()).sum();
                if buffers.len() != needed {
                    return Err(refuse(meta_start, "a record batch whose buffers do not match the schema"));
                }
                // The node structs' position in the stream, to fix null counts in place.
                let nodes_at = meta.start + (nodes.bytes().as_ptr() as usize - buf[meta.clone()].as_ptr() as usize);
                arrow.arrays.clear();
                let mut buffer_index = 0;
                for (i, field) in arrow.fields.iter().enumerate() {
                    let node = nodes.get(i);
                    let length = usize::try_from(node.length()).map_err(|_| refuse(meta_start, "a negative length"))?;
                    let null_count =
                        usize::try_from(node.null_count()).map_err(|_| refuse(meta_start, "a negative null count"))?;
                    if null_count > length {
                        return Err(refuse(meta_start, "more nulls than values"));
                    }
                    let mut ranges = [0..0, 0..0, 0..0];
                    for range in ranges.iter_mut().take(field.layout.buffers()) {
                        let buffer = buffers.get(buffer_index);
                        buffer_index += 1;
                        let (offset, len) = (buffer.offset(), buffer.length());
                        let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
                            return Err(refuse(meta_start, "a negative buffer offset or length"));
                        };
                        let end = offset.checked_add(len).ok_or(refuse(meta_start, "a buffer past the body"))?;
                        if end > body_len {
                            return Err(refuse(meta_start, "a buffer past the body"));
                        }
                        *range = body.start + offset..body.start + end;
                    }
                    let [first, second, third] = ranges;
                    let (validity, offsets, values) = match field.layout {
                        Layout::Null => (0..0, 0..0, 0..0),
                        Layout::Struct | Layout::FixedSizeList => (first, 0..0, 0..0),
                        Layout::Bool | Layout::Fixed(_) => (first, 0..0, second),
                        Layout::List { .. } => (first, second, 0..0),
                        Layout::Utf8 { .. } | Layout::Binary { .. } => (first, second, third),
                    };
                    let view = ArrayView {
                        length,
                        null_count,
                        null_count_at: nodes_at + 16 * i + 8,
                        validity,
                        offsets,
                        values,
                    };
                    check_array(field, &view, buf, meta_start)?;
                    arrow.arrays.push(view);
                }
                check_disjoint(&mut arrow.buffers, &arrow.arrays, meta_start)?;
                report.rows += batch.length().max(0) as u64;
                if let Some(plan) = &plan {
                    mask_batch(ctx, buf, &plan.columns, scratch, report)?;
                }
            }
            MessageHeader::DictionaryBatch => return Err(refuse(meta_start, "a dictionary batch")),
            _ => return Err(refuse(meta_start, "a message that is not a schema or a record batch")),
        }
        pos = body.end;
    }
    plan.ok_or(refuse(0, "a stream without a schema"))
}

/// Masks free text (a column's name) in place, at its length: what
/// [`free_text_spans`] finds.
fn mask_free_text(ctx: &MaskCtx<'_>, text: &mut [u8], scratch: &mut Scratch, report: &mut MaskReport) {
    let Scratch { spans, views, .. } = scratch;
    let anchored = free_text_spans(ctx.profile, text, spans, views);
    if spans.is_empty() {
        return;
    }
    settle_spans(ctx.profile, text, anchored, spans, views);
    report.count(spans.iter().fold(0, |k, s| k | s.kinds));
    apply_spans_fixed_len(ctx.profile, text, spans);
}

/// Checks that the buffers an array's masking will touch are as long as its length needs.
fn check_array(field: &FieldDesc, view: &ArrayView, buf: &[u8], offset: usize) -> Result<(), MaskError> {
    let n = view.length;
    let bitmap = n.div_ceil(8);
    if field.layout != Layout::Null {
        if view.validity.is_empty() && view.null_count > 0 {
            return Err(refuse(offset, "nulls without a validity bitmap"));
        }
        if !view.validity.is_empty() && view.validity.len() < bitmap {
            return Err(refuse(offset, "a validity bitmap shorter than its array"));
        }
    }
    match field.layout {
        Layout::Fixed(width)
            if view.values.len() < n.checked_mul(width).ok_or(refuse(offset, "an array too long"))? =>
        {
            Err(refuse(offset, "a values buffer shorter than its array"))
        }
        Layout::Bool if view.values.len() < bitmap => Err(refuse(offset, "a values bitmap shorter than its array")),
        Layout::Utf8 { large } | Layout::Binary { large } | Layout::List { large } => {
            if n == 0 {
                return Ok(());
            }
            let width = if large { 8 } else { 4 };
            let needed =
                n.checked_add(1).and_then(|m| m.checked_mul(width)).ok_or(refuse(offset, "an array too long"))?;
            if view.offsets.len() < needed {
                return Err(refuse(offset, "an offsets buffer shorter than its array"));
            }
            let mut previous = 0;
            for i in 0..=n {
                let at = view.offsets.start + i * width;
                let value = read_offset(buf, at, large).ok_or(refuse(offset, "a negative offset"))?;
                if i > 0 && value < previous {
                    return Err(refuse(offset, "offsets that go backwards"));
                }
                previous = value;
            }
            if matches!(field.layout, Layout::Utf8 { .. } | Layout::Binary { .. }) && previous > view.values.len() {
                return Err(refuse(offset, "offsets past the data buffer"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks that no two non-empty buffers of a record batch share a byte. Masking writes into
/// buffers where they lie, so bytes shared by two buffers (say, one column's text and another's
/// offsets) would let masking one array rewrite another behind its checks. Arrow writers lay
/// every buffer out on its own; a stream that does not is refused.
fn check_disjoint(sorted: &mut Vec<Range<usize>>, arrays: &[ArrayView], offset: usize) -> Result<(), MaskError> {
    sorted.clear();
    for view in arrays {
        for range in [&view.validity, &view.offsets, &view.values] {
            if !range.is_empty() {
                sorted.push(range.clone());
            }
        }
    }
    sorted.sort_unstable_by_key(|r| r.start);
    if sorted.windows(2).any(|pair| pair[1].start < pair[0].end) {
        return Err(refuse(offset, "buffers that overlap"));
    }
    Ok(())
}

#[inline]
fn read_offset(buf: &[u8], at: usize, large: bool) -> Option<usize> {
    if large {
        usize::try_from(i64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?)).ok()
    } else {
        usize::try_from(i32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?)).ok()
    }
}

/// The absolute range of value `i` of a text or binary array (offsets already checked).
#[inline]
fn value_range(buf: &[u8], view: &ArrayView, i: usize, large: bool) -> Range<usize> {
    let width = if large { 8 } else { 4 };
    let at = view.offsets.start + i * width;
    let start = read_offset(buf, at, large).unwrap_or(0);
    let end = read_offset(buf, at + width, large).unwrap_or(start);
    view.values.start + start..view.values.start + end
}

fn is_valid(buf: &[u8], view: &ArrayView, i: usize) -> bool {
    view.validity.is_empty() || buf[view.validity.start + i / 8] & (1 << (i % 8)) != 0
}

fn set_null(buf: &mut [u8], view: &ArrayView, i: usize) {
    buf[view.validity.start + i / 8] &= !(1 << (i % 8));
}

/// Recounts the nulls of an array from its bitmap and writes the count into its node.
fn fix_null_count(buf: &mut [u8], view: &ArrayView) {
    let n = view.length;
    let full_bytes = n / 8;
    let bitmap = &buf[view.validity.start..view.validity.start + n.div_ceil(8)];
    let mut valid: usize = bitmap[..full_bytes].iter().map(|b| b.count_ones() as usize).sum();
    if !n.is_multiple_of(8) {
        valid += (bitmap[full_bytes] & ((1u8 << (n % 8)) - 1)).count_ones() as usize;
    }
    let nulls = (n - valid) as i64;
    buf[view.null_count_at..view.null_count_at + 8].copy_from_slice(&nulls.to_le_bytes());
}

fn mask_batch(
    ctx: &MaskCtx<'_>,
    buf: &mut [u8],
    columns: &[PlannedColumn],
    scratch: &mut Scratch,
    report: &mut MaskReport,
) -> Result<(), MaskError> {
    let profile = ctx.profile;
    let Scratch { arrow, spans, views, .. } = scratch;
    for (column, planned) in columns.iter().enumerate() {
        let root = arrow.roots[column];
        let fields = &arrow.fields[root..root + arrow.fields[root].subtree];
        let arrays = &arrow.arrays[root..root + fields.len()];
        if let Some(rule) = planned.rule {
            let style = profile.columns[usize::from(rule)].style;
            let top = &arrays[0];
            let values = (top.length - top.null_count) as u64;
            let null = style == Style::Null && planned.nullable && fields[0].nullable && !top.validity.is_empty();
            if null {
                buf[top.validity.start..top.validity.start + top.length.div_ceil(8)].fill(0);
                fix_null_count(buf, top);
            }
            let style = if null { Style::TypeValid } else { style };
            mask_subtree(ctx, buf, fields, arrays, planned.value_type, style);
            report.count_many(RuleKind::Column.bit(), values);
            continue;
        }
        let card = profile.detector_style(DetectorKind::Card);
        for (index, (field, view)) in fields.iter().zip(arrays).enumerate() {
            match field.layout {
                Layout::Utf8 { large } => {
                    let nullable = index == 0 && planned.nullable && field.nullable && !view.validity.is_empty();
                    // Only a column's own text is JSON (VARIANT...); strings nested in it are text.
                    let value_type = if index == 0 { planned.value_type } else { ValueType::Text };
                    scan_text(ctx, buf, TextArray { view, large, nullable, value_type }, spans, views, report);
                }
                // A column's whole numbers, and those nested in a structured column (a list or
                // object of NUMBER), which its JSON form would show as text.
                Layout::Fixed(width @ (8 | 16))
                    if card.is_some()
                        && if index == 0 {
                            planned.value_type == (ValueType::Fixed { scale: 0 })
                        } else {
                            field.whole_number
                        } =>
                {
                    let null = index == 0
                        && card == Some(Style::Null)
                        && planned.nullable
                        && field.nullable
                        && !view.validity.is_empty();
                    scan_card_numbers(buf, view, width, null, report);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Masks every value below a column's root with a style (type-valid for non-text leaves).
fn mask_subtree(
    ctx: &MaskCtx<'_>,
    buf: &mut [u8],
    fields: &[FieldDesc],
    arrays: &[ArrayView],
    value_type: ValueType,
    style: Style,
) {
    for (index, (field, view)) in fields.iter().zip(arrays).enumerate() {
        match field.layout {
            Layout::Utf8 { large } => {
                let text_type = if index == 0 && value_type.is_text() { value_type } else { ValueType::Text };
                for i in 0..view.length {
                    let range = value_range(buf, view, i, large);
                    mask_text_value(ctx, &mut buf[range], text_type, style);
                }
            }
            Layout::Binary { large } if view.length > 0 => {
                let start = value_range(buf, view, 0, large).start;
                let end = value_range(buf, view, view.length - 1, large).end;
                buf[start..end.max(start)].fill(0);
            }
            Layout::Fixed(width) if !field.timezone => {
                buf[view.values.start..view.values.start + view.length * width].fill(0);
            }
            Layout::Bool => buf[view.values.start..view.values.start + view.length.div_ceil(8)].fill(0),
            _ => {}
        }
    }
}

/// Masks a whole text value in place with a style, keeping its byte length.
fn mask_text_value(ctx: &MaskCtx<'_>, value: &mut [u8], value_type: ValueType, style: Style) {
    match style {
        // Stars or a token in JSON text would not parse: it gets a type-valid value too.
        Style::TypeValid | Style::Null => {
            let len = type_valid_text(value_type, value);
            fill(&mut value[len..], b' ');
        }
        _ if value_type == ValueType::Json => mask_text_value(ctx, value, value_type, Style::TypeValid),
        _ => {
            let span = Span { start: 0, end: value.len(), style, kinds: 0 };
            apply_spans_fixed_len(ctx.profile, value, &[span]);
        }
    }
}

/// A text (Utf8 or LargeUtf8) array as [`scan_text`] reads it.
#[derive(Clone, Copy)]
struct TextArray<'v> {
    view: &'v ArrayView,
    /// LargeUtf8: 64-bit offsets.
    large: bool,
    /// Whether a `null`-style mask may make a value NULL.
    nullable: bool,
    value_type: ValueType,
}

/// Runs the dictionary and detectors over a text array's values and masks what they find.
fn scan_text(
    ctx: &MaskCtx<'_>,
    buf: &mut [u8],
    array: TextArray<'_>,
    spans: &mut Vec<Span>,
    views: &mut Views,
    report: &mut MaskReport,
) {
    #[cfg(target_arch = "x86_64")]
    if features::x86_64_v3() {
        // SAFETY: the CPU has every feature `scan_text_v3` is compiled for (checked just above).
        #[allow(unsafe_code)]
        return unsafe { scan_text_v3(ctx, buf, array, spans, views, report) };
    }
    scan_text_values(ctx, buf, array, spans, views, report)
}

/// [`scan_text_values`] compiled for x86-64-v3 CPUs (see `RowsWalker::walk_v3` in `json.rs`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt")]
fn scan_text_v3(
    ctx: &MaskCtx<'_>,
    buf: &mut [u8],
    array: TextArray<'_>,
    spans: &mut Vec<Span>,
    views: &mut Views,
    report: &mut MaskReport,
) {
    scan_text_values(ctx, buf, array, spans, views, report)
}

#[inline(always)]
fn scan_text_values(
    ctx: &MaskCtx<'_>,
    buf: &mut [u8],
    array: TextArray<'_>,
    spans: &mut Vec<Span>,
    views: &mut Views,
    report: &mut MaskReport,
) {
    let TextArray { view, large, nullable, value_type } = array;
    if view.length == 0 {
        return;
    }
    let profile = ctx.profile;
    let dictionary = &profile.dictionary;
    let region_end = value_range(buf, view, view.length - 1, large).end;
    let mut cursor = MatchCursor::new(dictionary, buf, value_range(buf, view, 0, large).start, region_end);
    let text_type = if value_type.is_text() { value_type } else { ValueType::Text };
    let mut nulls_written = false;
    for i in 0..view.length {
        let range = value_range(buf, view, i, large);
        spans.clear();
        let mut anchored = 0u32;
        cursor.collect(dictionary, buf, range.start, range.end, &mut anchored, spans);
        // A value of up to 64 bytes is read as one 64-byte window where the buffer allows.
        let len = range.end - range.start;
        match buf.get(range.start..range.start + 64).filter(|_| len <= 64) {
            Some(window) => {
                let window: &[u8; 64] = window.try_into().expect("64 bytes");
                let one = detect_short(profile, window, len, anchored, spans, views);
                spans.extend(one);
            }
            None => {
                let value = &buf[range.clone()];
                let value_stats = stats(value);
                // As in the JSON byte walk: a percent escape of an ASCII byte has a digit; the
                // dictionary's words are looked for in decoded values whatever their escapes.
                if value_stats.at || value_stats.digits > 0 || anchored != 0 || !dictionary.is_empty() {
                    detect_spans(profile, value, value_stats, anchored, spans, views);
                }
            }
        }
        if spans.is_empty() {
            continue;
        }
        settle_spans(profile, &buf[range.clone()], anchored, spans, views);
        report.count(spans.iter().fold(0, |k, s| k | s.kinds));
        if nullable && spans.iter().any(|s| s.style == Style::Null) && is_valid(buf, view, i) {
            set_null(buf, view, i);
            nulls_written = true;
            mask_text_value(ctx, &mut buf[range], text_type, Style::TypeValid);
        } else {
            let value = &mut buf[range];
            apply_spans_fixed_len(profile, value, spans);
            // Masked JSON text (VARIANT, OBJECT, ARRAY) must stay JSON, else it becomes `null`.
            if text_type == ValueType::Json && !is_json_text(value) {
                mask_text_value(ctx, value, text_type, Style::TypeValid);
            }
        }
    }
    if nulls_written {
        fix_null_count(buf, view);
    }
}

/// Card numbers stored as numbers (FIXED scale 0 as int64 or decimal128): a value of 13 to 19
/// digits passing Luhn becomes zero, or NULL when the card detector's mask is `null`.
fn scan_card_numbers(buf: &mut [u8], view: &ArrayView, width: usize, null: bool, report: &mut MaskReport) {
    let mut nulls_written = false;
    for i in 0..view.length {
        let at = view.values.start + i * width;
        let magnitude = if width == 8 {
            i64::from_le_bytes(buf[at..at + 8].try_into().unwrap_or_default()).unsigned_abs() as u128
        } else {
            i128::from_le_bytes(buf[at..at + 16].try_into().unwrap_or_default()).unsigned_abs()
        };
        if !(1_000_000_000_000..10_000_000_000_000_000_000).contains(&magnitude) {
            continue;
        }
        let mut digits = [0u8; 20];
        let mut n = magnitude;
        let mut len = 0;
        while n > 0 {
            digits[19 - len] = b'0' + (n % 10) as u8;
            n /= 10;
            len += 1;
        }
        let mut hit = false;
        DetectorKind::Card.find(&digits[20 - len..], &mut |_, _| hit = true);
        if hit {
            buf[at..at + width].fill(0);
            if null && is_valid(buf, view, i) {
                set_null(buf, view, i);
                nulls_written = true;
            }
            report.count(RuleKind::Detector(DetectorKind::Card).bit());
        }
    }
    if nulls_written {
        fix_null_count(buf, view);
    }
}

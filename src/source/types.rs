//! What kind of JSON each Postgres type becomes, mirroring the categories `to_jsonb` uses.
//!
//! Guarantees:
//! - [`builtin_kind`] knows every type in `pg_type` with OID < 10000 (as of PostgreSQL 15, which
//!   includes all types of later releases up to 17) and answers without I/O; any other OID gives
//!   `None`.
//! - [`TypeResolver`] answers every OID it was asked to resolve: domains become their base type
//!   (through any number of levels), true array types (those `to_jsonb` treats as arrays:
//!   `typelem <> 0 AND typlen = -1`) become [`TypeKind::Array`] of their element's kind with the
//!   element's `typdelim`, composite types become [`TypeKind::Composite`] with their live
//!   attributes' names and kinds in `attnum` order, and everything else (enums, ranges, extension
//!   types) becomes [`TypeKind::Text`]. OIDs the catalog does not know become `Text` with a
//!   warning.
//! - Casts to `json`, which `to_jsonb` uses for non-built-in types (OID ≥ 16384, after resolving
//!   domains): `hstore`'s is reproduced ([`TypeKind::Hstore`]); any other such type becomes
//!   [`TypeKind::CastFallback`], rendered as its text (a documented deviation that
//!   `walhook check` reports per column).
//! - Composite attributes can change (`ALTER TYPE … ADD/DROP/RENAME ATTRIBUTE`) without a new
//!   OID: [`TypeResolver::refresh`] re-reads every composite reachable from the OIDs it is given,
//!   while other kinds stay cached for the resolver's lifetime (they cannot change under an OID).
//!
//! `int2vector` and `oidvector` are true arrays for `to_jsonb` (`[1, 2]`), but their text output
//! is space-separated without braces (`1 2`). They are modelled as arrays with delimiter `b' '`,
//! which the value parser reads as that brace-less form.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    Bool,
    Integer,
    Numeric,
    Float,
    Json,
    Date,
    Timestamp,
    TimestampTz,
    Text,
    Array {
        element: Box<TypeKind>,
        delimiter: u8,
    },
    /// A row type: rendered as an object keyed by attribute name.
    Composite(Arc<Composite>),
    /// The `hstore` extension type: rendered as its json cast does (string or null values).
    Hstore,
    /// A non-built-in type with a cast to json that walhook does not reproduce: sent as text.
    CastFallback,
}

/// A composite type's live attributes (dropped ones excluded), in `attnum` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composite {
    pub oid: u32,
    pub fields: Vec<(String, TypeKind)>,
}

impl TypeKind {
    pub fn array_of(element: TypeKind, delimiter: u8) -> TypeKind {
        TypeKind::Array {
            element: Box::new(element),
            delimiter,
        }
    }

    /// A composite kind from (attribute name, kind) pairs; `oid` only identifies it in logs.
    pub fn composite(oid: u32, fields: Vec<(String, TypeKind)>) -> TypeKind {
        TypeKind::Composite(Arc::new(Composite { oid, fields }))
    }

    /// Whether a composite appears anywhere inside (its attributes may change under the OID).
    pub fn has_composite(&self) -> bool {
        match self {
            TypeKind::Composite(_) => true,
            TypeKind::Array { element, .. } => element.has_composite(),
            _ => false,
        }
    }

    /// Whether any part of a value of this kind is sent as text where `to_jsonb` would apply a
    /// json cast.
    pub fn has_cast_fallback(&self) -> bool {
        match self {
            TypeKind::CastFallback => true,
            TypeKind::Array { element, .. } => element.has_cast_fallback(),
            TypeKind::Composite(c) => c.fields.iter().any(|(_, k)| k.has_cast_fallback()),
            _ => false,
        }
    }
}

const BOX_OID: u32 = 603;
const INT2VECTOR_OID: u32 = 22;
const OIDVECTOR_OID: u32 = 30;

/// Scalar built-ins `to_jsonb` renders through their text output as a JSON string.
const TEXT_OIDS: &[u32] = &[
    17, 18, 19, 24, 25, 26, 27, 28, 29, 32, 71, 75, 81, 83, 142, 194, 269, 325, 600, 601, 602, 603,
    604, 628, 650, 705, 718, 774, 790, 829, 869, 1033, 1042, 1043, 1083, 1186, 1248, 1266, 1560,
    1562, 1790, 2202, 2203, 2204, 2205, 2206, 2249, 2275, 2276, 2277, 2278, 2279, 2280, 2281, 2283,
    2776, 2842, 2843, 2950, 2970, 3115, 3220, 3310, 3361, 3402, 3500, 3614, 3615, 3642, 3734, 3769,
    3831, 3838, 3904, 3906, 3908, 3910, 3912, 3926, 4066, 4072, 4089, 4096, 4191, 4451, 4532, 4533,
    4534, 4535, 4536, 4537, 4538, 4600, 4601, 5017, 5038, 5069, 5077, 5078, 5079, 5080, 6101,
];

/// Built-in array types as (array OID, element OID).
const ARRAY_OIDS: &[(u32, u32)] = &[
    (143, 142),
    (199, 114),
    (210, 71),
    (270, 75),
    (271, 5069),
    (272, 81),
    (273, 83),
    (629, 628),
    (651, 650),
    (719, 718),
    (775, 774),
    (791, 790),
    (1000, 16),
    (1001, 17),
    (1002, 18),
    (1003, 19),
    (1005, 21),
    (1006, 22),
    (1007, 23),
    (1008, 24),
    (1009, 25),
    (1010, 27),
    (1011, 28),
    (1012, 29),
    (1013, 30),
    (1014, 1042),
    (1015, 1043),
    (1016, 20),
    (1017, 600),
    (1018, 601),
    (1019, 602),
    (1020, 603),
    (1021, 700),
    (1022, 701),
    (1027, 604),
    (1028, 26),
    (1034, 1033),
    (1040, 829),
    (1041, 869),
    (1115, 1114),
    (1182, 1082),
    (1183, 1083),
    (1185, 1184),
    (1187, 1186),
    (1231, 1700),
    (1263, 2275),
    (1270, 1266),
    (1561, 1560),
    (1563, 1562),
    (2201, 1790),
    (2207, 2202),
    (2208, 2203),
    (2209, 2204),
    (2210, 2205),
    (2211, 2206),
    (2287, 2249),
    (2949, 2970),
    (2951, 2950),
    (3221, 3220),
    (3643, 3614),
    (3644, 3642),
    (3645, 3615),
    (3735, 3734),
    (3770, 3769),
    (3807, 3802),
    (3905, 3904),
    (3907, 3906),
    (3909, 3908),
    (3911, 3910),
    (3913, 3912),
    (3927, 3926),
    (4073, 4072),
    (4090, 4089),
    (4097, 4096),
    (4192, 4191),
    (5039, 5038),
    (6150, 4451),
    (6151, 4532),
    (6152, 4533),
    (6153, 4534),
    (6155, 4535),
    (6157, 4536),
];

fn builtin_delimiter(element_oid: u32) -> u8 {
    if element_oid == BOX_OID {
        b';'
    } else {
        b','
    }
}

/// Built-in types by OID; `None` means "ask the catalog".
pub fn builtin_kind(oid: u32) -> Option<TypeKind> {
    let kind = match oid {
        16 => TypeKind::Bool,
        20 | 21 | 23 => TypeKind::Integer,
        1700 => TypeKind::Numeric,
        700 | 701 => TypeKind::Float,
        114 | 3802 => TypeKind::Json,
        1082 => TypeKind::Date,
        1114 => TypeKind::Timestamp,
        1184 => TypeKind::TimestampTz,
        INT2VECTOR_OID => TypeKind::array_of(TypeKind::Integer, b' '),
        OIDVECTOR_OID => TypeKind::array_of(TypeKind::Text, b' '),
        _ => {
            if TEXT_OIDS.binary_search(&oid).is_ok() {
                TypeKind::Text
            } else {
                let i = ARRAY_OIDS.binary_search_by_key(&oid, |&(a, _)| a).ok()?;
                let elem = ARRAY_OIDS[i].1;
                TypeKind::array_of(builtin_kind(elem)?, builtin_delimiter(elem))
            }
        }
    };
    Some(kind)
}

/// Every OID [`builtin_kind`] knows, for pre-filling caches.
fn builtin_oids() -> impl Iterator<Item = u32> {
    [16, 20, 21, 23, 1700, 700, 701, 114, 3802, 1082, 1114, 1184]
        .into_iter()
        .chain([INT2VECTOR_OID, OIDVECTOR_OID])
        .chain(TEXT_OIDS.iter().copied())
        .chain(ARRAY_OIDS.iter().map(|&(a, _)| a))
}

/// One `pg_type` row, as far as kinds are concerned.
#[derive(Debug)]
struct CatalogType {
    typtype: u8,
    basetype: u32,
    elem: u32,
    is_array: bool,
    delimiter: u8,
    /// Composite attributes (name, type OID); empty for other types.
    attributes: Vec<(String, u32)>,
    /// Name of the function of a cast to json, for non-built-in types that have one.
    json_cast: Option<String>,
    name: String,
}

/// Nesting bound: real catalogs are shallow; this only stops a corrupt cycle.
const MAX_DEPTH: usize = 32;

/// Resolves type OIDs to kinds through the catalog, caching every answer for the connection's
/// lifetime (type OIDs are stable; a dropped and re-created type gets a new OID).
#[derive(Debug)]
pub struct TypeResolver {
    cache: HashMap<u32, TypeKind>,
}

impl Default for TypeResolver {
    fn default() -> Self {
        Self::new()
    }
}

// Follows domains, array elements and composite attributes from the requested OIDs in one
// round trip. 114 is `json`: `to_jsonb` looks for a function cast to json (not jsonb), and only
// for types that are not built in.
const RESOLVE_SQL: &str = "\
WITH RECURSIVE wanted(oid) AS ( \
    SELECT unnest($1::oid[]) \
  UNION \
    SELECT x.oid FROM wanted w \
    JOIN pg_catalog.pg_type t ON t.oid = w.oid \
    CROSS JOIN LATERAL ( \
        SELECT t.typbasetype UNION ALL SELECT t.typelem \
        UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a \
        WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
    ) AS x(oid) \
    WHERE x.oid <> 0 \
) \
SELECT t.oid, t.typtype::text, t.typbasetype, t.typelem, \
       (t.typelem <> 0 AND t.typlen = -1) AS is_array, t.typdelim::text, \
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
             WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 \
               AND NOT a.attisdropped ORDER BY a.attnum), \
       ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a \
             WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 \
               AND NOT a.attisdropped ORDER BY a.attnum), \
       (SELECT p.proname::text FROM pg_catalog.pg_cast c \
        JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc \
        WHERE t.oid >= 16384 AND c.castsource = t.oid AND c.casttarget = 114 \
          AND c.castmethod = 'f'), \
       t.typname::text \
FROM wanted w JOIN pg_catalog.pg_type t ON t.oid = w.oid";

impl TypeResolver {
    pub fn new() -> Self {
        let cache = builtin_oids()
            .filter_map(|oid| Some((oid, builtin_kind(oid)?)))
            .collect();
        TypeResolver { cache }
    }

    /// Describes a type without the catalog (benchmarks, tests); replaces a cached kind.
    pub fn insert(&mut self, oid: u32, kind: TypeKind) {
        self.cache.insert(oid, kind);
    }

    /// Cached or built-in kind; never does I/O.
    pub fn get(&self, oid: u32) -> Option<&TypeKind> {
        self.cache.get(&oid)
    }

    /// Fills the cache for every OID in `oids` not yet known, with one query.
    pub async fn resolve(
        &mut self,
        client: &tokio_postgres::Client,
        oids: &[u32],
    ) -> Result<(), tokio_postgres::Error> {
        self.load(client, oids, false).await
    }

    /// Like [`TypeResolver::resolve`], and also re-reads every OID whose kind holds a composite
    /// (whose attributes may have changed since), with one query.
    pub async fn refresh(
        &mut self,
        client: &tokio_postgres::Client,
        oids: &[u32],
    ) -> Result<(), tokio_postgres::Error> {
        self.load(client, oids, true).await
    }

    async fn load(
        &mut self,
        client: &tokio_postgres::Client,
        oids: &[u32],
        fresh: bool,
    ) -> Result<(), tokio_postgres::Error> {
        let mut missing: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|o| match self.cache.get(o) {
                None => true,
                Some(k) => fresh && k.has_composite(),
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let rows = client.query(RESOLVE_SQL, &[&missing]).await?;
        let mut catalog = HashMap::with_capacity(rows.len());
        for row in rows {
            let oid: u32 = row.try_get(0)?;
            let typtype: String = row.try_get(1)?;
            let delim: String = row.try_get(5)?;
            catalog.insert(
                oid,
                CatalogType {
                    typtype: typtype.bytes().next().unwrap_or(b'b'),
                    basetype: row.try_get(2)?,
                    elem: row.try_get(3)?,
                    is_array: row.try_get(4)?,
                    // A multi-byte rendering means an exotic non-ASCII "char"; ',' is the norm.
                    delimiter: if delim.len() == 1 {
                        delim.as_bytes()[0]
                    } else {
                        b','
                    },
                    attributes: row
                        .try_get::<_, Vec<String>>(6)?
                        .into_iter()
                        .zip(row.try_get::<_, Vec<u32>>(7)?)
                        .collect(),
                    json_cast: row.try_get(8)?,
                    name: row.try_get(9)?,
                },
            );
        }
        for oid in missing {
            let kind = self.kind_from_catalog(oid, &catalog, 0);
            self.cache.insert(oid, kind);
        }
        Ok(())
    }

    fn kind_from_catalog(
        &self,
        oid: u32,
        catalog: &HashMap<u32, CatalogType>,
        depth: usize,
    ) -> TypeKind {
        // A cached composite is stale when the catalog was just read for it.
        if let Some(kind) = self.cache.get(&oid) {
            if !kind.has_composite() || !catalog.contains_key(&oid) {
                return kind.clone();
            }
        }
        let Some(t) = catalog.get(&oid) else {
            warn!(
                oid,
                "type OID not found in pg_type; its values will be JSON strings"
            );
            return TypeKind::Text;
        };
        if depth >= MAX_DEPTH {
            warn!(
                oid,
                depth, "type nesting too deep; its values will be JSON strings"
            );
            return TypeKind::Text;
        }
        if t.typtype == b'd' && t.basetype != 0 {
            return self.kind_from_catalog(t.basetype, catalog, depth + 1);
        }
        if t.is_array {
            let delimiter = match catalog.get(&t.elem) {
                Some(e) => e.delimiter,
                None => builtin_delimiter(t.elem),
            };
            let element = self.kind_from_catalog(t.elem, catalog, depth + 1);
            return TypeKind::array_of(element, delimiter);
        }
        if t.typtype == b'c' {
            let fields = t
                .attributes
                .iter()
                .map(|(name, ty)| {
                    (
                        name.clone(),
                        self.kind_from_catalog(*ty, catalog, depth + 1),
                    )
                })
                .collect();
            return TypeKind::composite(oid, fields);
        }
        match t.json_cast.as_deref() {
            Some("hstore_to_json") if t.name == "hstore" => TypeKind::Hstore,
            Some(_) => TypeKind::CastFallback,
            None => TypeKind::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(TEXT_OIDS.windows(2).all(|w| w[0] < w[1]));
        assert!(ARRAY_OIDS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn scalar_builtins() {
        assert_eq!(builtin_kind(16), Some(TypeKind::Bool));
        for oid in [20, 21, 23] {
            assert_eq!(builtin_kind(oid), Some(TypeKind::Integer));
        }
        assert_eq!(builtin_kind(1700), Some(TypeKind::Numeric));
        assert_eq!(builtin_kind(700), Some(TypeKind::Float));
        assert_eq!(builtin_kind(701), Some(TypeKind::Float));
        assert_eq!(builtin_kind(114), Some(TypeKind::Json));
        assert_eq!(builtin_kind(3802), Some(TypeKind::Json));
        assert_eq!(builtin_kind(1082), Some(TypeKind::Date));
        assert_eq!(builtin_kind(1114), Some(TypeKind::Timestamp));
        assert_eq!(builtin_kind(1184), Some(TypeKind::TimestampTz));
        // oid, money, text, uuid, interval: strings, not numbers.
        for oid in [26, 790, 25, 2950, 1186] {
            assert_eq!(builtin_kind(oid), Some(TypeKind::Text));
        }
        assert_eq!(builtin_kind(16384), None);
        assert_eq!(builtin_kind(9999), None);
    }

    #[test]
    fn array_builtins() {
        let arr = |e, d| Some(TypeKind::array_of(e, d));
        assert_eq!(builtin_kind(1007), arr(TypeKind::Integer, b','));
        assert_eq!(builtin_kind(1231), arr(TypeKind::Numeric, b','));
        assert_eq!(builtin_kind(3807), arr(TypeKind::Json, b','));
        assert_eq!(builtin_kind(1115), arr(TypeKind::Timestamp, b','));
        assert_eq!(builtin_kind(1185), arr(TypeKind::TimestampTz, b','));
        assert_eq!(builtin_kind(1182), arr(TypeKind::Date, b','));
        assert_eq!(builtin_kind(1000), arr(TypeKind::Bool, b','));
        assert_eq!(builtin_kind(1020), arr(TypeKind::Text, b';'));
        assert_eq!(builtin_kind(1009), arr(TypeKind::Text, b','));
        assert_eq!(builtin_kind(22), arr(TypeKind::Integer, b' '));
        assert_eq!(
            builtin_kind(1006),
            arr(TypeKind::array_of(TypeKind::Integer, b' '), b',')
        );
    }

    #[test]
    fn resolver_knows_builtins_without_io() {
        let r = TypeResolver::new();
        assert_eq!(r.get(23), Some(&TypeKind::Integer));
        assert_eq!(r.get(1020), builtin_kind(1020).as_ref());
        assert_eq!(r.get(16384), None);
        for oid in builtin_oids() {
            assert_eq!(r.get(oid), builtin_kind(oid).as_ref(), "oid {oid}");
        }
    }
}

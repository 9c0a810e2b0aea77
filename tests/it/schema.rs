//! The entity tables' columns are declared once in Rust (`src/columns.rs`); the migrated
//! schema must match that declaration exactly, column for column and type for type.

use std::collections::BTreeMap;

use partnerstack::Entity;
use partnerstack_sync::columns;
use partnerstack_sync::db::attribution;

use crate::common::TestDb;

/// What the service declares for `entity`'s table: bookkeeping, typed and derived columns.
fn declared(entity: Entity) -> BTreeMap<String, String> {
    let mut columns: BTreeMap<String, String> = columns::BOOKKEEPING
        .iter()
        .chain(columns::of(entity))
        .map(|c| (c.name.to_string(), c.ty.reported().to_string()))
        .collect();
    if let Some(derived) = attribution::derived_columns(columns::table(entity), "i") {
        for (name, _) in derived.columns {
            columns.insert(name.to_string(), "text".to_string());
        }
    }
    columns
}

async fn migrated(db: &TestDb, table: &str) -> BTreeMap<String, String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = $1",
    )
    .bind(table)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Every difference between a declaration and a table, one line each.
fn differences(
    table: &str,
    declared: &BTreeMap<String, String>,
    migrated: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, ty) in migrated {
        match declared.get(name) {
            None => out.push(format!(
                "{table}.{name} ({ty}) is in the migrations but not declared in src/columns.rs"
            )),
            Some(d) if d != ty => out.push(format!(
                "{table}.{name} is {ty} in the migrations but declared {d}"
            )),
            Some(_) => {}
        }
    }
    for (name, ty) in declared {
        if !migrated.contains_key(name) {
            out.push(format!(
                "{table}.{name} ({ty}) is declared but no migration creates it"
            ));
        }
    }
    out
}

#[tokio::test]
async fn every_entity_table_matches_its_declaration() {
    let db = TestDb::new().await;
    let mut problems = Vec::new();
    for entity in Entity::ALL {
        let table = columns::table(entity);
        problems.extend(differences(
            table,
            &declared(entity),
            &migrated(&db, table).await,
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check above can fail: a column added by a migration but not declared is named.
#[tokio::test]
async fn a_migrated_column_missing_from_the_declaration_is_named() {
    let db = TestDb::new().await;
    sqlx::query("ALTER TABLE customers ADD COLUMN loyalty_tier text")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE leads ALTER COLUMN amount TYPE integer")
        .execute(&db.pool)
        .await
        .unwrap();
    let customers = differences(
        "customers",
        &declared(Entity::Customer),
        &migrated(&db, "customers").await,
    );
    assert_eq!(
        customers,
        ["customers.loyalty_tier (text) is in the migrations but not declared in src/columns.rs"]
    );
    let leads = differences(
        "leads",
        &declared(Entity::Lead),
        &migrated(&db, "leads").await,
    );
    assert_eq!(
        leads,
        ["leads.amount is integer in the migrations but declared bigint"]
    );
}

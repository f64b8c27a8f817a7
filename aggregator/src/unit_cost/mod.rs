//! Cost per recommendation (issue 28): which component each bill line belongs to (`config`,
//! `[cost]`), lines spread over the hours they cover, exactly (`prorate`), and the calendar
//! periods they are reported by (`periods`). The hourly allocation and the unit cost build on
//! these.

pub mod config;
pub mod periods;
pub mod prorate;

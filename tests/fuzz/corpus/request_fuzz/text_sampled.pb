Lily"млL?(fff?%млL=-мл▄?0(2.2
8Btenant-aH
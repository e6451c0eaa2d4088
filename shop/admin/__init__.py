"""Operations staff: suppliers, certification, products, stock, fulfilment."""

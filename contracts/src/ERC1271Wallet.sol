// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title Minimal ERC-1271 smart wallet for tests.
/// @notice Accepts a signature iff it is a 65-byte ECDSA signature over the given hash by `owner`.
/// @dev The hash is checked as-is (no eth_sign prefix) because USDC passes the EIP-712 digest of the
///      authorization, which the owner signs directly. High-s and non-{27,28} v are rejected so that this
///      wallet is exactly as strict as FiatTokenV2_2's own EOA path.
contract ERC1271Wallet {
    bytes4 internal constant MAGIC_VALUE = 0x1626ba7e;
    bytes4 internal constant INVALID_SIGNATURE = 0xffffffff;
    // secp256k1n / 2: signatures with a larger s are malleable twins of a low-s signature.
    uint256 internal constant HALF_CURVE_ORDER =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    address public immutable owner;

    constructor(address owner_) {
        owner = owner_;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) {
            return INVALID_SIGNATURE;
        }
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > HALF_CURVE_ORDER || (v != 27 && v != 28)) {
            return INVALID_SIGNATURE;
        }
        address signer = ecrecover(hash, v, r, s);
        // ecrecover returns address(0) on failure; never let a zero owner accept garbage.
        if (signer == address(0) || signer != owner) {
            return INVALID_SIGNATURE;
        }
        return MAGIC_VALUE;
    }
}

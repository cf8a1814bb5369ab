// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {ERC1271Wallet} from "./ERC1271Wallet.sol";

/// @title CREATE2 factory for ERC1271Wallet, used to test ERC-6492 counterfactual signatures.
/// @notice An ERC-6492 signature wraps (this factory, abi.encodeCall(deploy, (owner, salt)), inner signature);
///         a verifier runs that calldata to bring the wallet into existence, then asks it via ERC-1271.
contract ERC1271WalletFactory {
    event WalletDeployed(address indexed wallet, address indexed owner, bytes32 salt);

    /// @dev Idempotent on purpose: ERC-6492 verifiers and settlement code may replay the deploy calldata
    ///      after the wallet exists, and a revert there would turn a valid signature into a failure.
    function deploy(address owner, bytes32 salt) external returns (address wallet) {
        wallet = computeAddress(owner, salt);
        if (wallet.code.length != 0) {
            return wallet;
        }
        ERC1271Wallet created = new ERC1271Wallet{salt: salt}(owner);
        // Guards against computeAddress and the compiler's CREATE2 input ever drifting apart.
        require(address(created) == wallet, "ERC1271WalletFactory: address mismatch");
        emit WalletDeployed(wallet, owner, salt);
    }

    /// @notice The address `deploy(owner, salt)` creates; the owner is part of the init code, so one salt
    ///         gives every owner a distinct wallet.
    function computeAddress(address owner, bytes32 salt) public view returns (address) {
        bytes32 initCodeHash = keccak256(abi.encodePacked(type(ERC1271Wallet).creationCode, abi.encode(owner)));
        return address(uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), address(this), salt, initCodeHash)))));
    }
}
